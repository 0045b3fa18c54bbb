// myason's built-in page: traffic, top talkers and ports, the agent selector, the time zone, and
// the page's start (docs/api.md). Vanilla JS, no external resources; charts are SVG drawn here.
// core.js (shared helpers), events.js (events, IDEA view, greylist) and search.js (flow search)
// are loaded before it.
'use strict';
(function () {
  const M = window.myason;
  const {PERIODS, $, state, api, el, svg, markLoaded, markError, table, si, fmtBytes, fmtCount, toSeconds, fmtTime,
    fmtMinute, fmtTick, isoTime, protoName} = M;
  // Width of one point of each period (myason/api/periods.py): which period shows a whole range.
  const WINDOWS = {'1h': 60, '6h': 600, '1d': 1800, '1w': 14400, '1m': 43200, '3m': 172800, '1y': 604800};
  const PROTO_COLORS = {tcp: '#2f6fdf', udp: '#f0a030', icmp: '#3fae6a', icmpv6: '#8a5bd6', gre: '#d65b8a', esp: '#4bb8c4', other: '#9aa3b5'};
  const PALETTE = ['#d65b8a', '#4bb8c4', '#b8a030', '#6b7385', '#c46a3d'];
  const SERVICES = {20: 'ftp-data', 21: 'ftp', 22: 'ssh', 23: 'telnet', 25: 'smtp', 53: 'dns', 67: 'dhcp', 80: 'http',
    110: 'pop3', 123: 'ntp', 143: 'imap', 161: 'snmp', 389: 'ldap', 443: 'https', 445: 'smb', 587: 'submission',
    993: 'imaps', 995: 'pop3s', 1194: 'openvpn', 3306: 'mysql', 3389: 'rdp', 5432: 'postgresql', 5900: 'vnc', 8080: 'http-alt'};
  const MAX_SERIES = 6;
  const REFRESH_MS = 60000;
  state.traffic = null; state.lastQuery = null; state.timer = null; state.range = null;

  const rateUnit = () => (state.metric === 'bits' ? 'b/s' : 'pkt/s');
  // The query string that ends the period at state.end (nothing while it ends now).
  const endParam = () => (state.end ? '&end=' + encodeURIComponent(isoTime(state.end)) : '');
  const agentParam = () => (state.agent ? '&agent=' + encodeURIComponent(state.agent) : '');
  function niceStep(max, ticks) {
    const raw = max / ticks;
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const f = raw / mag;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
  }
  function spanText(sec) {
    return sec >= 86400 && sec % 86400 === 0 ? sec / 86400 + ' d' : sec >= 3600 && sec % 3600 === 0 ? sec / 3600 + ' h' : sec / 60 + ' min';
  }
  function windowSeconds(w, fallback) {
    if (typeof w === 'number' && w > 0) return w;
    const m = /^(\d+(?:\.\d+)?)([smhdw])$/.exec(String(w || ''));
    return m ? Number(m[1]) * {s: 1, m: 60, h: 3600, d: 86400, w: 604800}[m[2]] : fallback;
  }

  // --- traffic chart -----------------------------------------------------------------------
  async function loadTraffic() {
    const node = $('traffic-chart');
    try {
      const data = await api('traffic?by=proto&period=' + state.period + agentParam() + endParam());
      state.traffic = data;
      drawTraffic();
      const flows = (data.points || []).reduce((a, p) => a + (Number(p.flows) || 0), 0);
      markLoaded(node, (data.points || []).length);
      node.dataset.points = String((data.points || []).length);
      node.dataset.flows = String(flows);
      await offerRange(flows);
    } catch (err) {
      state.traffic = null;
      $('traffic-legend').replaceChildren();
      markError(node, err);
    }
  }

  // --- where the data is ---------------------------------------------------------------------
  // A replayed capture keeps its own times, so the period ending now may hold nothing while the
  // store is full: say where the data is, and offer to show it.
  async function offerRange(flows) {
    const notice = $('range-notice');
    if (flows > 0) { notice.hidden = true; return; }
    let range;
    try {
      range = await api('range');
    } catch (err) {
      notice.hidden = true;
      return;
    }
    if (!range.first || !range.last) { notice.hidden = true; return; }
    state.range = range;
    const where = state.end ? 'the ' + state.period + ' until ' + fmtMinute(state.end) : 'the last ' + state.period;
    $('range-text').textContent = 'no flows in ' + where + '; data exists from ' + fmtMinute(range.first) + ' to '
      + fmtMinute(range.last);
    notice.hidden = false;
  }
  // The shortest period whose windows, ending at `last`, reach back to `first` (1y when none does).
  function periodFor(first, last) {
    for (const name of Object.keys(PERIODS)) {
      const points = Math.ceil(PERIODS[name] / WINDOWS[name]);
      if ((points - 1) * WINDOWS[name] >= last - first) return name;
    }
    return '1y';
  }
  function showRange() {
    if (!state.range) return;
    const first = toSeconds(state.range.first), last = toSeconds(state.range.last);
    setView(periodFor(first, last), last);
  }
  function setView(period, end) {
    state.period = period;
    state.end = end;
    sessionStorage.setItem('myason.period', period);
    if (end) sessionStorage.setItem('myason.end', String(end)); else sessionStorage.removeItem('myason.end');
    markButtons();
    M.resetPaging();
    refresh();
  }

  // Columns per window (the rate is the window's average), stacked by protocol; the busiest
  // MAX_SERIES protocols get their own colour, the rest is "other".
  function drawTraffic() {
    const data = state.traffic;
    const node = $('traffic-chart');
    if (!data) return;
    const period = PERIODS[state.period];
    const win = windowSeconds(data.window, period / 60);
    // The answer's own span: it ends now or at state.end, whatever this browser's clock says.
    const t0 = toSeconds(data.start);
    const slots = Math.max(1, Math.round((toSeconds(data.end) - t0) / win));
    const field = state.metric === 'bits' ? 'bytes' : 'packets';
    const scale = state.metric === 'bits' ? 8 / win : 1 / win;
    const totals = new Map();
    for (const p of data.points || []) {
      const name = protoName(p.key);
      const tot = totals.get(name) || {bytes: 0, packets: 0, flows: 0};
      tot.bytes += Number(p.bytes) || 0; tot.packets += Number(p.packets) || 0; tot.flows += Number(p.flows) || 0;
      totals.set(name, tot);
    }
    const ranked = [...totals.keys()].sort((a, b) => totals.get(b).bytes - totals.get(a).bytes);
    const shown = ranked.length > MAX_SERIES ? ranked.slice(0, MAX_SERIES - 1).concat(['other']) : ranked;
    const seriesOf = (name) => (shown.includes(name) ? name : 'other');
    const grid = Array.from({length: slots}, () => new Map());
    for (const p of data.points || []) {
      const i = Math.floor((toSeconds(p.t) - t0) / win + 1e-6);
      if (!(i >= 0 && i < slots)) continue;
      const s = seriesOf(protoName(p.key));
      grid[i].set(s, (grid[i].get(s) || 0) + (Number(p[field]) || 0) * scale);
    }
    let max = 0;
    for (const g of grid) max = Math.max(max, [...g.values()].reduce((a, b) => a + b, 0));

    // As wide as its box, however narrow: a minimum width would stick out of a phone's screen.
    const W = Math.max(160, node.clientWidth || 800), H = 260;
    const M = {l: W < 480 ? 58 : 74, r: 12, t: 10, b: 26};
    const iw = W - M.l - M.r, ih = H - M.t - M.b;
    const step = max > 0 ? niceStep(max, 4) : 1;
    const top = max > 0 ? Math.ceil(max / step) * step : 1;
    const x = (t) => M.l + ((t - t0) / (slots * win)) * iw;
    const y = (v) => M.t + ih - (v / top) * ih;
    const root = svg('svg', {width: W, height: H, viewBox: '0 0 ' + W + ' ' + H, role: 'img'});
    const axis = svg('g', {class: 'axis'});
    for (let k = 0, v = 0; v <= top + step / 2; k++, v = k * step) {
      axis.append(svg('line', {class: 'grid', x1: M.l, x2: W - M.r, y1: y(v), y2: y(v)}));
      axis.append(svg('text', {x: M.l - 6, y: y(v) + 4, 'text-anchor': 'end'}, si(v, rateUnit())));
    }
    // About one time label per 90 px, so that they never overlap.
    const ticks = Math.max(2, Math.min(6, Math.floor(iw / 90)));
    for (let k = 0; k <= ticks; k++) {
      const t = t0 + (slots * win * k) / ticks;
      axis.append(svg('text', {x: x(t), y: H - 8, 'text-anchor': k === 0 ? 'start' : k === ticks ? 'end' : 'middle'}, fmtTick(t, period)));
    }
    root.append(axis);
    const colors = {};
    shown.forEach((name, i) => { colors[name] = PROTO_COLORS[name] || PALETTE[i % PALETTE.length]; });
    const bw = Math.max(1, iw / slots - (iw / slots > 4 ? 1 : 0));
    grid.forEach((g, i) => {
      if (!g.size) return;
      const t = t0 + i * win;
      const col = svg('g', {class: 'col', 'data-t': String(t)});
      const lines = [fmtTime(t, true) + ' (' + spanText(win) + ')'];
      let acc = 0;
      for (const name of shown) {
        const v = g.get(name);
        if (!v) continue;
        col.append(svg('rect', {x: x(t), width: bw, y: y(acc + v), height: Math.max(0.5, y(acc) - y(acc + v)), fill: colors[name]}));
        acc += v;
        lines.push(name + ': ' + si(v, rateUnit()));
      }
      col.append(svg('title', {}, lines.join('\n')));
      root.append(col);
    });
    root.append(svg('line', {x1: M.l, x2: W - M.r, y1: y(0), y2: y(0), stroke: '#9aa3b5'}));
    if (!(data.points || []).length) {
      root.append(svg('text', {x: M.l + iw / 2, y: M.t + ih / 2, 'text-anchor': 'middle', fill: '#6b7385'}, 'no traffic stored in this period'));
    }
    node.replaceChildren(root);
    $('traffic-info').textContent = '\u2014 ' + (state.metric === 'bits' ? 'bits' : 'packets') + ' per second, '
      + spanText(win) + ' averages' + (data.resolution ? ' (rollup ' + data.resolution + ')' : '');
    $('traffic-legend').replaceChildren(...shown.map((name) => {
      const tot = name === 'other' ? ranked.filter((n) => !shown.includes(n)).reduce((a, n) => a + totals.get(n).bytes, 0) : totals.get(name).bytes;
      return el('span', {}, el('i', {style: 'background:' + colors[name]}), el('b', {text: name}), ' ' + fmtBytes(tot));
    }));
  }

  // --- top tables --------------------------------------------------------------------------
  async function loadTop(dimension, id, label, toQuery) {
    const node = $(id);
    try {
      const data = await api('top/' + dimension + '?limit=10&period=' + state.period + agentParam() + endParam());
      // A search from the list asks for the flows of the list's own span.
      const span = state.end ? 'after/' + isoTime(data.start) + '/before/' + isoTime(data.end) : 'after/' + M.SINCE[state.period];
      const rows = data.rows || [];
      const max = Math.max(1, ...rows.map((r) => Number(r.bytes) || 0));
      const trs = rows.map((r, i) => {
        const link = el('a', {href: '#', title: 'search flows of ' + r.key, text: label(r.key)});
        link.addEventListener('click', (ev) => { ev.preventDefault(); M.runSearch(toQuery(r.key) + '/' + span); });
        return el('tr', {},
          el('td', {class: 'num', text: String(i + 1)}), el('td', {class: 'key'}, link),
          el('td', {class: 'num', text: fmtBytes(r.bytes)}), el('td', {class: 'num', text: fmtCount(r.packets)}),
          el('td', {class: 'num', text: fmtCount(r.flows)}),
          el('td', {class: 'barcell'}, el('div', {class: 'meter', style: 'width:' + (100 * (Number(r.bytes) || 0) / max).toFixed(1) + '%'})));
      });
      node.replaceChildren(rows.length ? table([['#', 'num'], ['key'], ['bytes', 'num'], ['packets', 'num'], ['flows', 'num'], ['', 'barcell']], trs)
        : el('div', {class: 'empty', text: 'nothing stored in this period'}));
      markLoaded(node, rows.length);
    } catch (err) {
      markError(node, err);
    }
  }
  const portLabel = (k) => (SERVICES[Number(k)] ? k + ' (' + SERVICES[Number(k)] + ')' : String(k));

  // --- the agent selector --------------------------------------------------------------------
  // The agents with flows in the period shown (GET /agents); the one chosen stays listed even
  // when it has none there, so that the choice is never dropped silently.
  async function loadAgents() {
    const select = $('agent');
    try {
      const data = await api('agents?since=' + M.SINCE[state.period] + endParam());
      const agents = data.agents || [];
      const options = [el('option', {value: '', text: 'all agents'})];
      for (const a of agents) {
        options.push(el('option', {value: a.agent, title: (a.interfaces || []).join(', ') + '; last seen ' + fmtTime(a.last_seen, true),
          text: a.agent + ' (' + (a.interfaces || []).join(', ') + ')'}));
      }
      if (state.agent && !agents.some((a) => a.agent === state.agent)) {
        options.push(el('option', {value: state.agent, text: state.agent + ' (no flows in this period)'}));
      }
      select.replaceChildren(...options);
      select.value = state.agent;
      markLoaded(select, agents.length);
    } catch (err) {
      delete select.dataset.loaded;
      select.dataset.error = '1';
      select.title = err.message;
    }
  }
  function setAgent(name) {
    state.agent = name;
    if (name) sessionStorage.setItem('myason.agent', name); else sessionStorage.removeItem('myason.agent');
    M.resetPaging();
    refresh();
    if (state.lastQuery) M.runSearch();
  }

  // --- page ----------------------------------------------------------------------------------
  function showError(message) {
    const box = $('error');
    box.textContent = message;
    box.hidden = !message;
  }
  M.showAuth = function showAuth() {
    $('auth').hidden = false;
    showError(state.token ? 'The API refused the access token (401). Enter the token printed by `myason api`.'
      : 'No access token: open the address `myason api` printed (it ends in #token=...) or enter the token.');
  };
  function markButtons() {
    for (const b of document.querySelectorAll('#periods button')) b.classList.toggle('on', b.dataset.period === state.period);
    for (const b of document.querySelectorAll('#metric button')) b.classList.toggle('on', b.dataset.metric === state.metric);
    $('range').hidden = !state.end;
    $('range-end').textContent = state.end ? 'until ' + fmtMinute(state.end) : '';
    const tz = $('tz');
    tz.textContent = M.zoneName();
    tz.dataset.zone = state.utc ? 'utc' : 'local';
    tz.title = state.utc ? 'times in UTC; click for local time' : 'times in local time; click for UTC';
  }
  async function refresh() {
    clearTimeout(state.timer);
    const results = await Promise.allSettled([loadAgents(), loadTraffic(),
      loadTop('talkers', 'top-talkers', String, (k) => 'host/' + k),
      loadTop('ports', 'top-ports', portLabel, (k) => 'port/' + k),
      M.loadEvents(), M.loadGreylist()]);
    const failed = document.querySelectorAll('[data-error="1"]').length;
    if (!failed && results.every((r) => r.status === 'fulfilled')) { showError(''); $('auth').hidden = true; }
    $('updated').textContent = 'updated ' + fmtTime(Date.now() / 1000, true);
    state.timer = setTimeout(refresh, REFRESH_MS);
  }
  // A `#q=` in the address runs that search; `agent=` chooses the agent, `wait=` is passed on to /q.
  function readFragment(initial) {
    const f = M.fragment();
    if (f.wait !== undefined) state.wait = f.wait;
    let changed = false;
    if (f.agent !== undefined && f.agent !== state.agent) {
      state.agent = f.agent;
      sessionStorage.setItem('myason.agent', f.agent);
      changed = true;
    }
    if (f.q) M.runSearch(f.q);
    else if (changed && !initial && state.lastQuery) M.runSearch();
    return changed;
  }

  function init() {
    markButtons();
    M.initSearch();
    M.initEvents();
    $('periods').addEventListener('click', (ev) => {
      const p = ev.target.dataset && ev.target.dataset.period;
      if (!p) return;
      state.period = p; sessionStorage.setItem('myason.period', p); markButtons(); M.resetPaging(); refresh();
    });
    $('metric').addEventListener('click', (ev) => {
      const m = ev.target.dataset && ev.target.dataset.metric;
      if (!m) return;
      state.metric = m; sessionStorage.setItem('myason.metric', m); markButtons(); drawTraffic();
    });
    $('agent').addEventListener('change', (ev) => setAgent(ev.target.value));
    // Every time on the page is redrawn in the other zone; the choice is kept for next time.
    $('tz').addEventListener('click', () => {
      state.utc = !state.utc;
      localStorage.setItem('myason.tz', state.utc ? 'utc' : 'local');
      markButtons();
      refresh();
      if (state.lastQuery) M.runSearch();
    });
    $('range-show').addEventListener('click', showRange);
    $('range-now').addEventListener('click', () => setView(state.period, null));
    $('auth').addEventListener('submit', (ev) => {
      ev.preventDefault();
      state.token = $('token-input').value.trim();
      sessionStorage.setItem('myason.token', state.token);
      $('token-input').value = '';
      refresh();
      // A deep link opened without the token (from Grafana, in a new tab) runs its search now.
      const q = M.fragment().q;
      if (q) M.runSearch(q);
    });
    // Redrawn when its own box changes width, not only the window's: a scroll bar appearing narrows it too.
    let resizeTimer = null, drawnWidth = 0;
    new ResizeObserver(() => {
      const w = $('traffic-chart').clientWidth;
      if (w === drawnWidth) return;
      drawnWidth = w;
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(drawTraffic, 100);
    }).observe($('traffic-chart'));
    window.addEventListener('hashchange', () => {
      const t = M.readToken();
      const agentChanged = readFragment(false);
      if ((t && t !== state.token) || agentChanged) { state.token = t; refresh(); }
    });
    if (!state.token) M.showAuth();
    readFragment(true);
    refresh();
  }
  init();
})();
