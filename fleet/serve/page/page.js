// fleet serve's page: refreshes the jobs list, follows a job's logs and state (Server-Sent
// Events). Data from the server is only ever set as text (textContent, text nodes), never as
// markup: log lines are the container's to choose.
'use strict';

const MAX_LINES = 5000; // lines kept on the page per host; older ones are dropped from view

function refreshList() {
  // Re-read the list every 3 s, unless the filter is being typed in; the new table comes from
  // the server's escaped HTML, parsed inertly (DOMParser runs no script) and swapped whole.
  setInterval(async () => {
    const active = document.activeElement;
    if (active && active.closest && active.closest('#filter')) return;
    const answer = await fetch(location.href, {credentials: 'same-origin'});
    if (!answer.ok) return;
    const parsed = new DOMParser().parseFromString(await answer.text(), 'text/html');
    const table = parsed.getElementById('jobs');
    if (table) document.getElementById('jobs').replaceWith(document.adoptNode(table));
  }, 3000);
}

function appendLines(pre, lines) {
  // Follow the tail while the reader is at it; leave the view alone once they scroll up.
  const atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 8;
  for (const line of lines) {
    const div = document.createElement('div');
    div.className = 'line';
    div.textContent = line;
    pre.appendChild(div);
  }
  while (pre.childElementCount > MAX_LINES) pre.firstElementChild.remove();
  if (atBottom) pre.scrollTop = pre.scrollHeight;
}

// A job that waited for hosts has none on its page yet: its hosts' rows and logs are made as
// they appear (names set as text).
function hostLog(host) {
  let pre = document.getElementById('log-' + host);
  if (!pre) {
    const section = document.createElement('section');
    section.className = 'log';
    const title = document.createElement('h3');
    title.textContent = host;
    pre = document.createElement('pre');
    pre.id = 'log-' + host;
    pre.dataset.host = host;
    section.append(title, pre);
    document.getElementById('logs').appendChild(section);
  }
  return pre;
}

function hostExit(host) {
  let row = document.querySelector('#hosts tr[data-host="' + CSS.escape(host) + '"]');
  if (!row) {
    row = document.createElement('tr');
    row.dataset.host = host;
    for (const name of ['name', 'machine', 'exit']) {
      const cell = document.createElement('td');
      cell.className = name;
      row.appendChild(cell);
    }
    row.firstChild.textContent = host;
    document.querySelector('#hosts tbody').appendChild(row);
  }
  return row.querySelector('.exit');
}

function showState(state) {
  const status = document.getElementById('status');
  status.textContent = state.status;
  status.className = 'status ' + state.status;
  document.getElementById('failure').textContent = state.failure;
  document.getElementById('exit-message').textContent = state.exitMessage;
  document.getElementById('ended').textContent = state.ended;
  for (const [host, code] of Object.entries(state.exitCodes)) {
    hostExit(host).textContent = code === null || code === undefined ? '' : String(code);
    hostLog(host);
  }
  if (['Completed', 'Failed', 'Stopped'].includes(state.status)) {
    const stop = document.getElementById('stop');
    if (stop) stop.remove();
  }
}

function followJob(url) {
  const events = new EventSource(url);
  events.addEventListener('lines', (event) => {
    const data = JSON.parse(event.data);
    appendLines(hostLog(data.host), data.lines);
  });
  events.addEventListener('state', (event) => showState(JSON.parse(event.data)));
  events.addEventListener('end', () => {
    events.close();
    document.body.dataset.ended = '1';
  });
}

document.addEventListener('DOMContentLoaded', () => {
  const view = document.body.dataset.view;
  if (view === 'list' && document.body.dataset.refresh) refreshList();
  if (view === 'job') followJob(document.body.dataset.events);
});
