// myason's built-in page: traffic, top talkers and ports, events and flow search from the query
// API (docs/api.md). Vanilla JS, no external resources; charts are SVG drawn here.
// Each panel gets data-loaded="1" and data-count="N" once a request for it succeeded
// (data-error="1" when it failed), so tests and people can tell "empty" from "not loaded".
'use strict';
(function () {
  const PERIODS = {'1h': 3600, '6h': 21600, '1d': 86400, '1w': 604800, '1m': 2592000, '3m': 7776000, '1y': 31536000};
  // Width of one point of each period (myason/api/periods.py): which period shows a whole range.
  const WINDOWS = {'1h': 60, '6h': 600, '1d': 1800, '1w': 14400, '1m': 43200, '3m': 172800, '1y': 604800};
  // Durations for events and search: "1m" is a minute there, so months are given in days.
  const SINCE = {'1h': '1h', '6h': '6h', '1d': '1d', '1w': '7d', '1m': '30d', '3m': '90d', '1y': '365d'};
  const PROTO_NAMES = {1: 'icmp', 2: 'igmp', 6: 'tcp', 17: 'udp', 47: 'gre', 50: 'esp', 58: 'icmpv6', 132: 'sctp'};
  const PROTO_COLORS = {tcp: '#2f6fdf', udp: '#f0a030', icmp: '#3fae6a', icmpv6: '#8a5bd6', gre: '#d65b8a', esp: '#4bb8c4', other: '#9aa3b5'};
  const PALETTE = ['#d65b8a', '#4bb8c4', '#b8a030', '#6b7385', '#c46a3d'];
  const SERVICES = {20: 'ftp-data', 21: 'ftp', 22: 'ssh', 23: 'telnet', 25: 'smtp', 53: 'dns', 67: 'dhcp', 80: 'http',
    110: 'pop3', 123: 'ntp', 143: 'imap', 161: 'snmp', 389: 'ldap', 443: 'https', 445: 'smb', 587: 'submission',
    993: 'imaps', 995: 'pop3s', 1194: 'openvpn', 3306: 'mysql', 3389: 'rdp', 5432: 'postgresql', 5900: 'vnc', 8080: 'http-alt'};
  const MAX_SERIES = 6;
  const REFRESH_MS = 60000;
  const SVG = 'http://www.w3.org/2000/svg';
  const BASE = location.pathname.replace(/static\/[^/]*$/, '').replace(/[^/]*$/, '');
  const $ = (id) => document.getElementById(id);

  // end: null while the period ends now, else the Unix time it ends at (a range of stored data).
  const state = {period: sessionStorage.getItem('myason.period') || '1h', metric: sessionStorage.getItem('myason.metric') || 'bits',
    end: Number(sessionStorage.getItem('myason.end')) || null, token: readToken(), traffic: null, lastQuery: null,
    timer: null, range: null};
  if (!PERIODS[state.period]) state.period = '1h';

  // The token comes in the address fragment (never sent to the server), is kept for this tab only
  // and is then removed from the address bar so it does not end up in bookmarks or screenshots.
  function readToken() {
    const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
    if (m) {
      sessionStorage.setItem('myason.token', decodeURIComponent(m[1]));
      history.replaceState(null, '', location.pathname + location.search);
    }
    return sessionStorage.getItem('myason.token');
  }

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  async function api(path, accept) {
    const headers = {Accept: accept || 'application/json'};
    if (state.token) headers.Authorization = 'Bearer ' + state.token;
    let resp;
    try {
      resp = await fetch(BASE + path, {headers: headers, cache: 'no-store'});
    } catch (e) {
      throw new ApiError(0, 'cannot reach the API (' + e.message + ')');
    }
    if (!resp.ok) {
      let msg = resp.status + ' ' + resp.statusText;
      try {
        const body = await resp.json();
        const detail = body.error || body.detail;
        if (detail) msg = resp.status + ': ' + (typeof detail === 'string' ? detail : JSON.stringify(detail));
      } catch (e) { /* not JSON: keep the status line */ }
      if (resp.status === 401) showAuth();
      throw new ApiError(resp.status, msg);
    }
    return accept === 'text/csv' ? resp.text() : resp.json();
  }

  // --- small DOM helpers -------------------------------------------------------------------
  function el(tag, attrs, ...kids) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      // Styles through the CSSOM: a style attribute would be refused by the page's CSP.
      if (k === 'text') node.textContent = v; else if (k === 'style') node.style.cssText = v; else node.setAttribute(k, v);
    }
    for (const kid of kids) if (kid != null) node.append(kid);
    return node;
  }
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text != null) node.textContent = text;
    return node;
  }
  function markLoaded(node, count) {
    node.dataset.loaded = '1';
    node.dataset.count = String(count);
    delete node.dataset.error;
  }
  function markError(node, err) {
    delete node.dataset.loaded;
    node.dataset.error = '1';
    node.replaceChildren(el('div', {class: 'error', text: err.message}));
  }
  function table(headers, rows) {
    const head = el('tr', {}, ...headers.map(([label, cls]) => el('th', cls ? {class: cls, text: label} : {text: label})));
    return el('table', {}, el('thead', {}, head), el('tbody', {}, ...rows));
  }

  // --- formatting --------------------------------------------------------------------------
  function si(v, unit) {
    const a = Math.abs(v);
    const [d, p] = a >= 1e12 ? [1e12, 'T'] : a >= 1e9 ? [1e9, 'G'] : a >= 1e6 ? [1e6, 'M'] : a >= 1e3 ? [1e3, 'k'] : [1, ''];
    if (a > 0 && a < 1) return String(parseFloat(v.toPrecision(2))) + ' ' + unit;
    const x = v / d;
    // Three significant digits at most, no trailing zeros: "1 GB", "2.5 Mb/s", "333 kB".
    return String(parseFloat(x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2))) + ' ' + p + unit;
  }
  const fmtBytes = (v) => si(Number(v) || 0, 'B');
  const fmtCount = (v) => (Number(v) || 0).toLocaleString('en-US');
  const rateUnit = () => (state.metric === 'bits' ? 'b/s' : 'pkt/s');
  function toSeconds(t) {
    if (typeof t === 'number') return t;
    const ms = Date.parse(t);
    return isNaN(ms) ? NaN : ms / 1000;
  }
  const pad = (n) => String(n).padStart(2, '0');
  function fmtDay(t) {
    const d = new Date(toSeconds(t) * 1000);
    return isNaN(d) ? String(t) : d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate());
  }
  function fmtTime(t, withDate) {
    const d = new Date(toSeconds(t) * 1000);
    if (isNaN(d)) return String(t);
    const hm = pad(d.getHours()) + ':' + pad(d.getMinutes());
    return withDate ? fmtDay(t) + ' ' + hm + ':' + pad(d.getSeconds()) : hm;
  }
  // Seconds are truncated, as clocks show them: 12:00:28.999 is still second 28.
  const fmtClock = (t) => fmtTime(t, true).slice(11);
  const fmtMinute = (t) => fmtTime(t, true).slice(0, 16);
  // A time for the API and the search grammar: UTC ISO 8601, whole seconds without a fraction.
  const isoTime = (t) => new Date(toSeconds(t) * 1000).toISOString().replace('.000Z', 'Z');
  // The query string that ends the period at state.end (nothing while it ends now).
  const endParam = () => (state.end ? '&end=' + encodeURIComponent(isoTime(state.end)) : '');
  function fmtTick(t, period) {
    const d = new Date(t * 1000);
    if (period <= 86400) return pad(d.getHours()) + ':' + pad(d.getMinutes());
    if (period <= 604800) return d.toLocaleDateString('en-GB', {weekday: 'short'}) + ' ' + pad(d.getHours()) + 'h';
    return d.getFullYear() + '-' + pad(d.getMonth() + 1) + '-' + pad(d.getDate());
  }
  function protoName(key) {
    if (key === undefined || key === null || key === '') return 'all';
    const n = Number(key);
    return Number.isInteger(n) && String(key).trim() !== '' ? (PROTO_NAMES[n] || 'proto ' + n) : String(key);
  }
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
      const data = await api('traffic?by=proto&period=' + state.period + endParam());
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
      const data = await api('top/' + dimension + '?limit=10&period=' + state.period + endParam());
      // A search from the list asks for the flows of the list's own span.
      const span = state.end ? 'after/' + isoTime(data.start) + '/before/' + isoTime(data.end) : 'after/' + SINCE[state.period];
      const rows = data.rows || [];
      const max = Math.max(1, ...rows.map((r) => Number(r.bytes) || 0));
      const trs = rows.map((r, i) => {
        const link = el('a', {href: '#', title: 'search flows of ' + r.key, text: label(r.key)});
        link.addEventListener('click', (ev) => { ev.preventDefault(); runSearch(toQuery(r.key) + '/' + span); });
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

  // --- events ------------------------------------------------------------------------------
  function addresses(parts) {
    const out = [];
    for (const p of parts || []) out.push(...(p.IP4 || []), ...(p.IP6 || []));
    return out;
  }
  // Lines may break between addresses, never inside one.
  function addrCell(list) {
    const td = el('td', {class: 'addrs'});
    list.slice(0, 4).forEach((a, i) => td.append(...(i ? [', '] : []), el('span', {class: 'addr', text: a})));
    if (list.length > 4) td.append(' +' + (list.length - 4) + ' more');
    if (!list.length) td.textContent = '\u2013';
    return td;
  }
  async function loadEvents() {
    const node = $('events');
    try {
      const data = await api('events?limit=50&since=' + SINCE[state.period] + endParam());
      const events = (data.events || []).slice().sort((a, b) => toSeconds(b.DetectTime) - toSeconds(a.DetectTime));
      const trs = events.map((ev) => el('tr', {},
        el('td', {class: 'time', text: fmtTime(ev.DetectTime, true)}),
        el('td', {}, ...(ev.Category || []).map((c) => el('span', {class: 'tag', text: c}))),
        addrCell(addresses(ev.Source)), addrCell(addresses(ev.Target)),
        el('td', {text: ev.Description || ''})));
      node.replaceChildren(events.length ? el('div', {class: 'scroll'}, table([['time'], ['category'], ['source'], ['target'], ['description']], trs))
        : el('div', {class: 'empty', text: 'no events in this period'}));
      markLoaded(node, events.length);
    } catch (err) {
      markError(node, err);
    }
  }

  // --- flow search -------------------------------------------------------------------------
  // "host/1.2.3.4 port/80", "/q/host/1.2.3.4/port/80" and "host/1.2.3.4/port/80" all mean the same.
  function queryPath(text) {
    const parts = text.trim().replace(/^\/?q\//, '').split(/[\s/]+/).filter(Boolean);
    return parts.map(encodeURIComponent).join('/');
  }
  const TIME_COLUMNS = new Set(['first', 'last', 'received', 'detecttime']);
  // Short headings keep the table within a desktop screen; each keeps the API's name as its title.
  const LABELS = {if_name: 'if', src_ip: 'src', src_port: 'sport', dst_ip: 'dst', dst_port: 'dport', packets: 'pkts',
    tcp_flags: 'flags', direction: 'dir', src_country: 'src cc', dst_country: 'dst cc', src_asn: 'src AS', dst_asn: 'dst AS'};
  // A column is empty when no row has a value: null, '' or, for an ASN, 0 (unknown).
  const isEmpty = (column, v) => v === null || v === undefined || v === '' || (/_asn$/.test(column) && v === 0);
  function cell(column, value, sameDay) {
    if (isEmpty(column, value)) return el('td', {text: ''});
    if (TIME_COLUMNS.has(column)) return el('td', {class: 'time', title: String(value), text: sameDay ? fmtClock(value) : fmtTime(value, true)});
    if (column === 'proto') return el('td', {title: String(value), text: protoName(value)});
    if (typeof value === 'number') return el('td', {class: 'num', text: String(value)});
    if (typeof value === 'object') return el('td', {class: 'mono', text: JSON.stringify(value)});
    return el('td', {class: /_ip$|hop/.test(column) ? 'addr' : '', text: String(value)});
  }
  // The rows as a table without the columns that are empty in every row; times without their
  // date when all fall on one day (the status line names it).
  function flowTable(cols, rows) {
    const keep = cols.map((c, i) => i).filter((i) => rows.some((r) => !isEmpty(cols[i], r[i])));
    const days = rows.flatMap((r) => keep.filter((i) => TIME_COLUMNS.has(cols[i]) && r[i]).map((i) => fmtDay(r[i])));
    const day = days.length && days.every((d) => d === days[0]) ? days[0] : null;
    const head = el('tr', {}, ...keep.map((i) => el('th', {'data-col': cols[i], title: cols[i], text: LABELS[cols[i]] || cols[i]})));
    const body = rows.map((r) => el('tr', {}, ...keep.map((i) => cell(cols[i], r[i], day))));
    return {table: el('table', {class: 'flows'}, el('thead', {}, head), el('tbody', {}, ...body)), day: day};
  }
  async function runSearch(text) {
    const input = $('search-input'), node = $('search-results'), status = $('search-status');
    if (text !== undefined) input.value = text;
    const path = queryPath(input.value);
    if (!path) { input.focus(); return; }
    status.className = 'status';
    status.textContent = 'searching\u2026';
    delete node.dataset.loaded;
    try {
      const data = await api('q/' + path);
      const cols = data.columns || [];
      const rows = data.rows || [];
      state.lastQuery = path;
      $('search-csv').disabled = false;
      const shown = flowTable(cols, rows);
      node.replaceChildren(rows.length ? el('div', {class: 'scroll'}, shown.table) : el('div', {class: 'empty', text: 'no flows match'}));
      status.textContent = fmtCount(data.count !== undefined ? data.count : rows.length) + ' flow(s)'
        + (shown.day ? ' on ' + shown.day : '') + (data.truncated ? ' (truncated: add limit/N for more)' : '') + ' in '
        + (Number(data.elapsed) * 1000).toFixed(0) + ' ms \u2014 query ' + (data.query || path) + (data.id ? ' [' + data.id + ']' : '');
      markLoaded(node, rows.length);
    } catch (err) {
      status.className = 'status error';
      status.textContent = 'Search failed: ' + err.message;
      markError(node, err);
      node.replaceChildren();
    }
  }
  async function downloadCsv() {
    if (!state.lastQuery) return;
    try {
      const text = await api('q/' + state.lastQuery, 'text/csv');
      const a = el('a', {href: URL.createObjectURL(new Blob([text], {type: 'text/csv'})), download: 'flows.csv'});
      document.body.append(a); a.click(); a.remove();
    } catch (err) {
      $('search-status').className = 'status error';
      $('search-status').textContent = 'CSV failed: ' + err.message;
    }
  }

  // --- page ----------------------------------------------------------------------------------
  function showError(message) {
    const box = $('error');
    box.textContent = message;
    box.hidden = !message;
  }
  function showAuth() {
    $('auth').hidden = false;
    showError(state.token ? 'The API refused the access token (401). Enter the token printed by `myason api`.'
      : 'No access token: open the address `myason api` printed (it ends in #token=...) or enter the token.');
  }
  function markButtons() {
    for (const b of document.querySelectorAll('#periods button')) b.classList.toggle('on', b.dataset.period === state.period);
    for (const b of document.querySelectorAll('#metric button')) b.classList.toggle('on', b.dataset.metric === state.metric);
    $('range').hidden = !state.end;
    $('range-end').textContent = state.end ? 'until ' + fmtMinute(state.end) : '';
  }
  async function refresh() {
    clearTimeout(state.timer);
    const results = await Promise.allSettled([loadTraffic(),
      loadTop('talkers', 'top-talkers', String, (k) => 'host/' + k),
      loadTop('ports', 'top-ports', portLabel, (k) => 'port/' + k),
      loadEvents()]);
    const failed = document.querySelectorAll('[data-error="1"]').length;
    if (!failed && results.every((r) => r.status === 'fulfilled')) { showError(''); $('auth').hidden = true; }
    $('updated').textContent = 'updated ' + fmtTime(Date.now() / 1000, true);
    state.timer = setTimeout(refresh, REFRESH_MS);
  }

  function init() {
    markButtons();
    $('periods').addEventListener('click', (ev) => {
      const p = ev.target.dataset && ev.target.dataset.period;
      if (!p) return;
      state.period = p; sessionStorage.setItem('myason.period', p); markButtons(); refresh();
    });
    $('metric').addEventListener('click', (ev) => {
      const m = ev.target.dataset && ev.target.dataset.metric;
      if (!m) return;
      state.metric = m; sessionStorage.setItem('myason.metric', m); markButtons(); drawTraffic();
    });
    $('search-form').addEventListener('submit', (ev) => { ev.preventDefault(); runSearch(); });
    $('search-csv').addEventListener('click', downloadCsv);
    $('range-show').addEventListener('click', showRange);
    $('range-now').addEventListener('click', () => setView(state.period, null));
    $('auth').addEventListener('submit', (ev) => {
      ev.preventDefault();
      state.token = $('token-input').value.trim();
      sessionStorage.setItem('myason.token', state.token);
      $('token-input').value = '';
      refresh();
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
    window.addEventListener('hashchange', () => { const t = readToken(); if (t && t !== state.token) { state.token = t; refresh(); } });
    if (!state.token) showAuth();
    refresh();
  }
  init();
})();
