"""Slurm hostlist expressions: `gpu-[01-04,07],dgx[1-2]` names gpu-01..gpu-04, gpu-07, dgx1, dgx2.

`expand` gives the names in the order `scontrol show hostnames` gives them (Slurm 22.05, the
oracle of tests/integration/test_slurm_hostlist.py): the expression's order, not sorted, and
duplicates kept (`n[3,1],n1` is n3, n1, n1). ClusterShell's NodeSet would sort and dedupe, so
`gpu-[07,01-03]` would lose the order that makes gpu-07 algo-1; hence this small parser.

The syntax, as Slurm reads it:
- parts separated by commas outside brackets: `a1,b[1-2]`;
- a bracket holds comma-separated numbers and ranges `lo-hi`; a name is zero-padded to the
  width `lo` is written with (`n[01-10]`: n01..n10; `n[1-010]`: n1..n10);
- several brackets in one name: `r[1-2]n[01-03]`. Text may stand between brackets but not
  after the last one (`n[1-2].ib` is not a hostlist for Slurm, nor here). With three or more
  brackets Slurm nests its loops oddly (`x[1-2]y[3-4]z[5-6]`: x1y3z5 x1y3z6 x2y3z5 x2y3z6
  x1y4z5 ...: the next-to-last bracket varies slowest, then the others from right to left,
  the last fastest); `expand` follows it, as the node order is the algo-N order.

Stricter than Slurm, so a typo is an error rather than a surprise: an empty part (`a,,b`),
an unbalanced bracket (Slurm reads `a[1-2` as `a]`), whitespace, and characters outside
letters, digits, `.`, `_` and `-` (Slurm passes `a%b` through) are refused, as is a range
missing an end (Slurm reads `n[1-]` as n1).
"""

from __future__ import annotations

import itertools
import re

# Slurm refuses a range of more than 64 Ki names (MAX_RANGE); fleet caps the whole expression
# there, so `n[0-999999999]` is an error and not a few GB of strings.
MAX_HOSTS = 64 * 1024

_TEXT = re.compile(r"[A-Za-z0-9._-]*")
_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


class _Malformed(Exception):
    """What is wrong, without the expression (`expand` adds it once)."""


def expand(expression: str) -> list[str]:
    """The host names `expression` stands for, in Slurm's order (see the module docstring).

    Raises ValueError naming the expression and what is wrong with it.
    """
    try:
        parts = _split_parts(expression)
        names: list[str] = []
        for part in parts:
            names.extend(_expand_part(part, MAX_HOSTS - len(names)))
        return names
    except _Malformed as exc:
        raise ValueError(f"hostlist expression {expression!r}: {exc}") from exc


def _split_parts(expression: str) -> list[str]:
    """The comma-separated parts, commas inside brackets kept; checks the brackets balance."""
    if not expression.strip():
        raise _Malformed("names no host")
    parts, depth, start = [], 0, 0
    for i, char in enumerate(expression):
        if char == "[":
            if depth:
                raise _Malformed(f"'[' inside a bracket at position {i + 1}")
            depth = 1
        elif char == "]":
            if not depth:
                raise _Malformed(f"']' without its '[' at position {i + 1}")
            depth = 0
        elif char == "," and not depth:
            parts.append(expression[start:i])
            start = i + 1
    if depth:
        raise _Malformed("a '[' is never closed")
    parts.append(expression[start:])
    for n, part in enumerate(parts, 1):
        if not part:
            raise _Malformed(f"part {n} is empty (two commas in a row, or a comma at an end)")
    return parts


def _expand_part(part: str, room: int) -> list[str]:
    """One comma-separated part: `prefix[ranges]text[ranges]...`."""
    pieces = re.split(r"\[([^\]]*)\]", part)  # text, bracket, text, bracket, ..., text
    texts, brackets = pieces[0::2], pieces[1::2]
    for text in texts:
        if not _TEXT.fullmatch(text):
            bad = next(c for c in text if not _TEXT.fullmatch(c))
            raise _Malformed(f"{bad!r} in {part!r}: a host name holds letters, digits, '.', '_' and '-'")
    if not brackets:
        return [part]
    if texts[-1]:
        raise _Malformed(f"{texts[-1]!r} follows the last bracket of {part!r} "
                         f"(Slurm allows text only before a bracket)")
    values = [_bracket_values(bracket) for bracket in brackets]
    count = 1
    for numbers in values:
        count *= len(numbers)
    if count > room:
        raise _Malformed(f"names more than {MAX_HOSTS} hosts")
    # Slurm's loops, outermost first: the next-to-last bracket, then leftwards, the last innermost.
    order = [*range(len(brackets) - 2, -1, -1), len(brackets) - 1]
    names = []
    for combination in itertools.product(*(values[b] for b in order)):
        chosen = dict(zip(order, combination))
        names.append("".join(texts[b] + chosen[b] for b in range(len(brackets))))
    return names


def _bracket_values(bracket: str) -> list[str]:
    """`01-03,7` → ['01', '02', '03', '7']: each range padded to the width of its low end."""
    values: list[str] = []
    for item in bracket.split(","):
        match = _RANGE.fullmatch(item)
        if not match:
            raise _Malformed(f"[{bracket}]: {item!r} is not a number nor a range lo-hi")
        low, high = match.group(1), match.group(2) or match.group(1)
        if int(low) > int(high):
            raise _Malformed(f"[{bracket}]: the range {item} runs backwards")
        if int(high) - int(low) + 1 + len(values) > MAX_HOSTS:
            raise _Malformed(f"names more than {MAX_HOSTS} hosts")
        values.extend(f"{n:0{len(low)}d}" for n in range(int(low), int(high) + 1))
    return values
