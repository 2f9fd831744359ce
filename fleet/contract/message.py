"""ExitMessage: the first 1 KB of each host's /opt/ml/output/message, concatenated, cut to 1 KB."""

from __future__ import annotations

from fleet.errors import ClientError

MESSAGE_LIMIT = 1024


def exit_message(messages: list[tuple[str, bytes]]) -> str | None:
    """Join the hosts' messages in host order; None when no host wrote one.

    Each entry is (algo name, the first bytes of that host's file), for the hosts whose
    container wrote one (an empty file counts: ExitMessage is then ""). A message that is not
    UTF-8 is the job's ClientError, naming the host, as in SageMaker.
    """
    joined = b""
    present = False
    for algo, data in messages:
        head = data[:MESSAGE_LIMIT]
        try:
            head.decode("utf-8")
        except UnicodeDecodeError as exc:
            # The host's 1 KB cut may split the last character: that alone is no error.
            cut_inside_a_character = len(head) == MESSAGE_LIMIT and exc.reason == "unexpected end of data"
            if not cut_inside_a_character:
                raise ClientError(
                    f"the ExitMessage of {algo} (/opt/ml/output/message) is not UTF-8 "
                    f"(byte {exc.start})") from exc
        present = True
        joined += head
    if not present:
        return None
    # Every byte was checked above: "ignore" only drops a character split by the 1 KB cut.
    return joined[:MESSAGE_LIMIT].decode("utf-8", errors="ignore")
