// myason's built-in page, the parts every panel shares: the page's state, the API client, DOM
// helpers and the formatting of numbers and times (UTC or the browser's zone). Loaded first;
// the panels (events.js, search.js) and app.js use it through window.myason.
'use strict';
(function () {
  const PERIODS = {'1h': 3600, '6h': 21600, '1d': 86400, '1w': 604800, '1m': 2592000, '3m': 7776000, '1y': 31536000};
  // Durations for events, agents and search: "1m" is a minute there, so months are given in days.
  const SINCE = {'1h': '1h', '6h': '6h', '1d': '1d', '1w': '7d', '1m': '30d', '3m': '90d', '1y': '365d'};
  const SVG = 'http://www.w3.org/2000/svg';
  const BASE = location.pathname.replace(/static\/[^/]*$/, '').replace(/[^/]*$/, '');
  const $ = (id) => document.getElementById(id);

  // The address fragment: token=, q= (a flow search), agent= (the agent selector), wait= (passed
  // on to /q, e.g. 0 to get the asynchronous answer at once). Values are URL-encoded.
  function fragment() {
    const out = {};
    for (const part of location.hash.replace(/^#/, '').split('&')) {
      const i = part.indexOf('=');
      if (i > 0) {
        try { out[part.slice(0, i)] = decodeURIComponent(part.slice(i + 1)); } catch (e) { /* a broken escape: ignored */ }
      }
    }
    return out;
  }
  // The token is kept for this tab only and removed from the address bar (bookmarks, screenshots);
  // the other keys stay, so that a deep link still says what it shows.
  function readToken() {
    const f = fragment();
    if (f.token !== undefined) {
      sessionStorage.setItem('myason.token', f.token);
      const rest = location.hash.replace(/^#/, '').split('&').filter((p) => p && !/^token=/.test(p)).join('&');
      history.replaceState(null, '', location.pathname + location.search + (rest ? '#' + rest : ''));
    }
    return sessionStorage.getItem('myason.token');
  }

  // end: null while the period ends now, else the Unix time it ends at (a range of stored data).
  // agent: '' for all agents. utc: times shown in UTC (the default) or in the browser's zone.
  const state = {period: sessionStorage.getItem('myason.period') || '1h', metric: sessionStorage.getItem('myason.metric') || 'bits',
    end: Number(sessionStorage.getItem('myason.end')) || null, token: readToken(), agent: sessionStorage.getItem('myason.agent') || '',
    utc: localStorage.getItem('myason.tz') !== 'local', wait: null};
  if (!PERIODS[state.period]) state.period = '1h';

  class ApiError extends Error {
    constructor(status, message, body) { super(message); this.status = status; this.body = body; }
  }

  // GET BASE+path: the parsed body of a 2xx answer (text for CSV); with `full`, {status, body}.
  // Anything else is an ApiError carrying the API's {"error": ...} message.
  async function api(path, accept, full) {
    const headers = {Accept: accept || 'application/json'};
    if (state.token) headers.Authorization = 'Bearer ' + state.token;
    let resp;
    try {
      resp = await fetch(BASE + path, {headers: headers, cache: 'no-store'});
    } catch (e) {
      throw new ApiError(0, 'cannot reach the API (' + e.message + ')');
    }
    const type = resp.headers.get('content-type') || '';
    if (!resp.ok) {
      let msg = resp.status + ' ' + resp.statusText, body = null;
      try {
        body = await resp.json();
        const detail = body.error || body.detail;
        if (detail) msg = resp.status + ': ' + (typeof detail === 'string' ? detail : JSON.stringify(detail));
      } catch (e) { /* not JSON: keep the status line */ }
      if (resp.status === 401 && M.showAuth) M.showAuth();
      throw new ApiError(resp.status, msg, body);
    }
    const body = /json/.test(type) ? await resp.json() : await resp.text();
    return full ? {status: resp.status, body: body} : body;
  }

  // A file from the API saved by the browser: a link cannot send the bearer header, so the body
  // is fetched and handed over as a Blob.
  async function download(path, name) {
    const text = await api(path, 'text/csv');
    const a = el('a', {href: URL.createObjectURL(new Blob([text], {type: 'text/csv'})), download: name});
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }

  // --- small DOM helpers -------------------------------------------------------------------
  // Data only ever reaches the page as text (textContent, attributes), never as markup.
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
  // Each panel gets data-loaded="1" and data-count="N" once a request for it succeeded
  // (data-error="1" when it failed), so tests and people can tell "empty" from "not loaded".
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
  function table(headers, rows, cls) {
    const head = el('tr', {}, ...headers.map(([label, c]) => el('th', c ? {class: c, text: label} : {text: label})));
    return el('table', cls ? {class: cls} : {}, el('thead', {}, head), el('tbody', {}, ...rows));
  }

  // --- numbers -----------------------------------------------------------------------------
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

  // --- times: UTC unless the local zone is chosen ------------------------------------------
  function toSeconds(t) {
    if (typeof t === 'number') return t;
    const ms = Date.parse(t);
    return isNaN(ms) ? NaN : ms / 1000;
  }
  const pad = (n) => String(n).padStart(2, '0');
  // The calendar fields of Unix time t in the zone shown.
  function fields(t) {
    const d = new Date(t * 1000);
    return state.utc
      ? {y: d.getUTCFullYear(), mo: d.getUTCMonth() + 1, d: d.getUTCDate(), h: d.getUTCHours(), mi: d.getUTCMinutes(), s: d.getUTCSeconds(), wd: d.getUTCDay()}
      : {y: d.getFullYear(), mo: d.getMonth() + 1, d: d.getDate(), h: d.getHours(), mi: d.getMinutes(), s: d.getSeconds(), wd: d.getDay()};
  }
  // "UTC" or "local (UTC+01:00)": what every time on the page is in.
  function zoneName() {
    if (state.utc) return 'UTC';
    const off = -new Date().getTimezoneOffset();
    return 'local (UTC' + (off < 0 ? '-' : '+') + pad(Math.floor(Math.abs(off) / 60)) + ':' + pad(Math.abs(off) % 60) + ')';
  }
  function fmtDay(t) {
    const s = toSeconds(t);
    if (isNaN(s)) return String(t);
    const f = fields(s);
    return f.y + '-' + pad(f.mo) + '-' + pad(f.d);
  }
  function fmtTime(t, withDate) {
    const s = toSeconds(t);
    if (isNaN(s)) return String(t);
    const f = fields(s);
    const hm = pad(f.h) + ':' + pad(f.mi);
    return withDate ? fmtDay(s) + ' ' + hm + ':' + pad(f.s) : hm;
  }
  // Seconds are truncated, as clocks show them: 12:00:28.999 is still second 28.
  const fmtClock = (t) => fmtTime(t, true).slice(11);
  const fmtMinute = (t) => fmtTime(t, true).slice(0, 16);
  const WEEKDAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
  function fmtTick(t, period) {
    const f = fields(t);
    if (period <= 86400) return pad(f.h) + ':' + pad(f.mi);
    if (period <= 604800) return WEEKDAYS[f.wd] + ' ' + pad(f.h) + 'h';
    return f.y + '-' + pad(f.mo) + '-' + pad(f.d);
  }
  // A time typed by the user, "2026-12-07 05:00[:00]" in the zone shown (or with its own zone,
  // or Unix seconds) -> Unix seconds; NaN when it is none of these.
  function parseTyped(text) {
    const s = String(text).trim();
    if (/^\d+(\.\d+)?$/.test(s)) return Number(s);
    const m = /^(\d{4})-(\d\d)-(\d\d)(?:[T ](\d\d):(\d\d)(?::(\d\d))?)?$/.exec(s);
    if (m) {
      const a = [Number(m[1]), Number(m[2]) - 1, Number(m[3]), Number(m[4] || 0), Number(m[5] || 0), Number(m[6] || 0)];
      return (state.utc ? Date.UTC(...a) : new Date(...a).getTime()) / 1000;
    }
    return toSeconds(s);
  }
  // A time for the API and the search grammar: UTC ISO 8601, whole seconds without a fraction.
  const isoTime = (t) => new Date(toSeconds(t) * 1000).toISOString().replace('.000Z', 'Z');

  const M = window.myason = {PERIODS, SINCE, BASE, $, state, fragment, readToken, ApiError, api, download, el, svg,
    markLoaded, markError, table, si, fmtBytes, fmtCount, toSeconds, pad, zoneName, fmtDay, fmtTime, fmtClock,
    fmtMinute, fmtTick, parseTyped, isoTime, showAuth: null};
})();
