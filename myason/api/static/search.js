// myason's built-in page: the flow search (GET /q/<clauses>, docs/api.md). A search that is not
// done within the API's wait is answered 202 with an id: the page then polls /status/<id>,
// shows its state (queued, running) and time, and reads /result/<id> once it is done.
'use strict';
(function () {
  const M = window.myason;
  const {$, el, state} = M;
  const PROTO_NAMES = {1: 'icmp', 2: 'igmp', 6: 'tcp', 17: 'udp', 47: 'gre', 50: 'esp', 58: 'icmpv6', 132: 'sctp'};
  const POLL_MS = [200, 300, 500, 800, 1000];
  let generation = 0;     // a newer search makes an older one's polling stop

  function protoName(key) {
    if (key === undefined || key === null || key === '') return 'all';
    const n = Number(key);
    return Number.isInteger(n) && String(key).trim() !== '' ? (PROTO_NAMES[n] || 'proto ' + n) : String(key);
  }
  // "host/1.2.3.4 port/80", "/q/host/1.2.3.4/port/80" and "host/1.2.3.4/port/80" all mean the same;
  // the agent chosen on the page is added unless the search names one.
  function queryPath(text) {
    const parts = text.trim().replace(/^\/?q\//, '').split(/[\s/]+/).filter(Boolean);
    if (state.agent && parts.length && !parts.some((p) => p.toLowerCase() === 'agent')) parts.push('agent', state.agent);
    return parts.map(encodeURIComponent).join('/');
  }
  const waitParam = () => (state.wait !== null ? '?wait=' + encodeURIComponent(state.wait) : '');

  const TIME_COLUMNS = new Set(['first', 'last', 'received', 'detecttime']);
  // Short headings keep the table within a desktop screen; each keeps the API's name as its title.
  const LABELS = {if_name: 'if', src_ip: 'src', src_port: 'sport', dst_ip: 'dst', dst_port: 'dport', packets: 'pkts',
    tcp_flags: 'flags', direction: 'dir', src_country: 'src cc', dst_country: 'dst cc', src_asn: 'src AS', dst_asn: 'dst AS'};
  // A column is empty when no row has a value: null, '' or, for an ASN, 0 (unknown).
  const isEmpty = (column, v) => v === null || v === undefined || v === '' || (/_asn$/.test(column) && v === 0);
  function cell(column, value, sameDay) {
    if (isEmpty(column, value)) return el('td', {text: ''});
    if (TIME_COLUMNS.has(column)) return el('td', {class: 'time', title: String(value), text: sameDay ? M.fmtClock(value) : M.fmtTime(value, true)});
    if (column === 'proto') return el('td', {title: String(value), text: protoName(value)});
    if (typeof value === 'number') return el('td', {class: 'num', text: String(value)});
    if (typeof value === 'object') return el('td', {class: 'mono', text: JSON.stringify(value)});
    return el('td', {class: /_ip$|hop/.test(column) ? 'addr' : '', text: String(value)});
  }
  // The rows as a table without the columns that are empty in every row; times without their
  // date when all fall on one day (the status line names it).
  function flowTable(cols, rows) {
    const keep = cols.map((c, i) => i).filter((i) => rows.some((r) => !isEmpty(cols[i], r[i])));
    const days = rows.flatMap((r) => keep.filter((i) => TIME_COLUMNS.has(cols[i]) && r[i]).map((i) => M.fmtDay(r[i])));
    const day = days.length && days.every((d) => d === days[0]) ? days[0] : null;
    const head = el('tr', {}, ...keep.map((i) => el('th', {'data-col': cols[i], title: cols[i], text: LABELS[cols[i]] || cols[i]})));
    const body = rows.map((r) => el('tr', {}, ...keep.map((i) => cell(cols[i], r[i], day))));
    return {table: el('table', {class: 'flows'}, el('thead', {}, head), el('tbody', {}, ...body)), day: day};
  }

  function setStatus(text, cls, searchState) {
    const status = $('search-status');
    status.className = 'status' + (cls ? ' ' + cls : '');
    status.textContent = text;
    if (searchState) status.dataset.state = searchState; else delete status.dataset.state;
    // Every state this search went through, for people and tests: "sent running done".
    if (searchState && !(status.dataset.seen || '').split(' ').includes(searchState)) {
      status.dataset.seen = ((status.dataset.seen || '') + ' ' + searchState).trim();
    }
  }
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // The answer of a search: a 200 at once, or, after a 202, the result once /status says done.
  // Returns null when a newer search took over.
  async function answer(path, mine, csv) {
    const first = await M.api('q/' + path + (csv ? '.csv' : '') + waitParam(), csv ? 'text/csv' : undefined, true);
    if (first.status !== 202) return first.body;
    const job = typeof first.body === 'string' ? JSON.parse(first.body) : first.body;
    const started = Date.now();
    $('search-status').dataset.id = job.id;
    for (let i = 0; ; i++) {
      if (mine !== generation) return null;
      const st = i ? await M.api('status/' + job.id) : job;
      const secs = ((Date.now() - started) / 1000).toFixed(1);
      if (st.state === 'queued' || st.state === 'running') {
        setStatus(st.state + ' \u2014 ' + secs + ' s \u2014 query ' + (job.query || path) + ' [' + job.id + ']', 'pending', st.state);
        await sleep(POLL_MS[Math.min(i, POLL_MS.length - 1)]);
        continue;
      }
      if (st.state === 'expired') throw new M.ApiError(410, 'the result of ' + job.id + ' expired; search again');
      if (st.state === 'failed' || st.state === 'error') throw new M.ApiError(500, 'search failed: ' + (st.error || 'unknown error'));
      // Done: the result is read once; a 202 here (a race with a restart of the job) polls again.
      const res = await M.api('result/' + job.id + (csv ? '.csv' : ''), csv ? 'text/csv' : undefined, true);
      if (res.status !== 202) return res.body;
    }
  }

  async function runSearch(text) {
    const input = $('search-input'), node = $('search-results');
    if (text !== undefined) input.value = text;
    const path = queryPath(input.value);
    if (!path) { input.focus(); return; }
    const mine = ++generation;
    delete $('search-status').dataset.seen;
    setStatus('searching\u2026', '', 'sent');
    delete node.dataset.loaded;
    delete $('search-status').dataset.id;
    try {
      const data = await answer(path, mine, false);
      if (data === null) return;
      const cols = data.columns || [];
      const rows = data.rows || [];
      state.lastQuery = path;
      $('search-csv').disabled = false;
      const shown = flowTable(cols, rows);
      node.replaceChildren(rows.length ? el('div', {class: 'scroll'}, shown.table) : el('div', {class: 'empty', text: 'no flows match'}));
      setStatus(M.fmtCount(data.count !== undefined ? data.count : rows.length) + ' flow(s)'
        + (shown.day ? ' on ' + shown.day : '') + ' (times ' + M.zoneName() + ')'
        + (data.truncated ? ' (truncated: add limit/N for more)' : '')
        + (data.bound ? '; time bound ' + data.bound : '') + ' in '
        + (Number(data.elapsed) * 1000).toFixed(0) + ' ms \u2014 query ' + (data.query || path) + (data.id ? ' [' + data.id + ']' : ''),
      '', 'done');
      // The address names the search shown, so it can be kept or sent (the token is never in it).
      history.replaceState(null, '', location.pathname + location.search + '#q=' + encodeURIComponent(data.query || path)
        + (state.agent ? '&agent=' + encodeURIComponent(state.agent) : ''));
      markLoaded(node, rows.length);
    } catch (err) {
      if (mine !== generation) return;
      setStatus('Search failed: ' + err.message, 'error', err.status === 410 ? 'expired' : 'failed');
      M.markError(node, err);
      node.replaceChildren();
    }
  }
  const markLoaded = M.markLoaded;

  async function downloadCsv() {
    if (!state.lastQuery) return;
    try {
      const text = await answer(state.lastQuery, generation, true);
      if (text === null) return;
      const a = el('a', {href: URL.createObjectURL(new Blob([text], {type: 'text/csv'})), download: 'flows.csv'});
      document.body.append(a); a.click(); a.remove();
    } catch (err) {
      setStatus('CSV failed: ' + err.message, 'error');
    }
  }

  function init() {
    $('search-form').addEventListener('submit', (ev) => { ev.preventDefault(); runSearch(); });
    $('search-csv').addEventListener('click', downloadCsv);
  }

  Object.assign(M, {protoName, runSearch, initSearch: init});
})();
