// myason's built-in page: the event search (GET /events: category, source, target, agent, time
// range, paged by cursor; each event with the agents (probes) whose flows made it, which the
// agent selector filters on), one event as its full IDEA document with a link to its flows
// (GET /events/<id>), and the greylist of the events' sources (GET /greylist, /greylist.csv).
'use strict';
(function () {
  const M = window.myason;
  const {$, el, state} = M;
  const PAGE = 25;
  // The cursors of the pages shown so far: [null (the newest page), next of page 1, ...].
  const paging = {cursors: [null], next: null};

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

  // The query string of the event search: the form's filters, the agent chosen on the page, and
  // the form's time range, else the period shown.
  function filters() {
    const q = [];
    const add = (k, v) => { if (v) q.push(k + '=' + encodeURIComponent(v)); };
    add('category', $('ev-category').value.trim());
    add('source', $('ev-source').value.trim());
    add('target', $('ev-target').value.trim());
    add('agent', state.agent);
    const from = $('ev-from').value.trim(), to = $('ev-to').value.trim();
    if (from || to) {
      for (const [k, v] of [['start', from], ['end', to]]) {
        if (!v) continue;
        const t = M.parseTyped(v);
        if (isNaN(t)) throw new M.ApiError(400, k + ': not a time: ' + v + ' (e.g. ' + M.fmtTime(Date.now() / 1000, true) + ')');
        q.push(k + '=' + Math.floor(t));
      }
      if (!from) q.push('start=' + Math.floor(M.parseTyped(to) - M.PERIODS[state.period]));
    } else if (state.end) {
      q.push('start=' + Math.floor(state.end - M.PERIODS[state.period]), 'end=' + Math.floor(state.end));
    } else {
      q.push('since=' + M.SINCE[state.period]);
    }
    return q.join('&');
  }

  async function loadEvents() {
    const node = $('events');
    const page = paging.cursors.length;
    try {
      const cursor = paging.cursors[page - 1];
      const data = await M.api('events?limit=' + PAGE + '&' + filters() + (cursor ? '&cursor=' + encodeURIComponent(cursor) : ''));
      const events = data.events || [];
      paging.next = data.next || null;
      const trs = events.map((ev) => {
        const id = ev.id || ev.ID;
        const link = el('a', {href: '#', class: 'event-open', 'data-id': id, title: 'the whole IDEA event', text: M.fmtTime(ev.DetectTime, true)});
        link.addEventListener('click', (e) => { e.preventDefault(); openEvent(id); });
        return el('tr', {'data-id': id},
          el('td', {class: 'time'}, link),
          el('td', {}, ...(ev.Category || []).map((c) => el('span', {class: 'tag', text: c}))),
          addrCell(addresses(ev.Source)), addrCell(addresses(ev.Target)),
          el('td', {class: 'agents', text: (ev.agents || []).join(', ') || '\u2013'}),
          el('td', {text: ev.Description || ''}));
      });
      node.replaceChildren(events.length
        ? el('div', {class: 'scroll'}, M.table([['time (' + M.zoneName() + ')'], ['category'], ['source'], ['target'], ['agents'], ['description']], trs, 'events'))
        : el('div', {class: 'empty', text: page > 1 ? 'no older events' : 'no events match'}));
      $('ev-page').textContent = 'page ' + page + (events.length ? ': ' + events.length + ' event(s)' : '');
      $('ev-older').disabled = !paging.next;
      $('ev-newer').disabled = page <= 1;
      node.dataset.page = String(page);
      M.markLoaded(node, events.length);
    } catch (err) {
      $('ev-older').disabled = true;
      M.markError(node, err);
    }
  }
  // A new search (or period, or agent) starts on the newest page again.
  function resetPaging() {
    paging.cursors = [null];
    paging.next = null;
  }

  // --- one event ---------------------------------------------------------------------------
  async function openEvent(id) {
    const card = $('event-view'), node = $('event-idea');
    card.hidden = false;
    delete node.dataset.loaded;
    $('event-title').textContent = id;
    $('event-flows').replaceChildren();
    node.textContent = 'loading\u2026';
    try {
      const data = await M.api('events/' + encodeURIComponent(id));
      // Pretty JSON as text: whatever an event holds is never read as markup.
      node.textContent = JSON.stringify(data.idea, null, 2);
      const flows = data.flows || {};
      if (flows.clauses) {
        const href = M.BASE + String(flows.page || '#q=' + encodeURIComponent(flows.clauses)).replace(/^\//, '');
        const link = el('a', {id: 'event-flows-link', href: href, 'data-clauses': flows.clauses, text: 'Flows of this event'});
        link.addEventListener('click', (e) => {
          e.preventDefault();
          M.runSearch(flows.clauses);
          $('search-card').scrollIntoView();
        });
        $('event-flows').replaceChildren(link, ' ', el('code', {text: flows.clauses}));
      }
      node.dataset.id = id;
      M.markLoaded(node, 1);
    } catch (err) {
      M.markError(node, err);
    }
    card.scrollIntoView();
  }

  // --- greylist ----------------------------------------------------------------------------
  const greylistSince = () => M.SINCE[state.period];
  async function loadGreylist() {
    const node = $('greylist');
    try {
      const data = await M.api('greylist?since=' + greylistSince());
      const rows = data.rows || [];
      const trs = rows.map((r) => el('tr', {},
        el('td', {class: 'addr', text: r.address}),
        el('td', {}, ...(r.categories || []).map((c) => el('span', {class: 'tag', text: c}))),
        el('td', {class: 'time', text: M.fmtTime(r.first_seen, true)}), el('td', {class: 'time', text: M.fmtTime(r.last_seen, true)}),
        el('td', {class: 'num', text: M.fmtCount(r.events)})));
      node.replaceChildren(rows.length
        ? el('div', {class: 'scroll'}, M.table([['address'], ['categories'], ['first seen (' + M.zoneName() + ')'], ['last seen'], ['events', 'num']], trs))
        : el('div', {class: 'empty', text: 'no event sources in the last ' + greylistSince()}));
      $('greylist-info').textContent = '\u2014 sources of the events of the last ' + greylistSince() + ', all agents';
      M.markLoaded(node, rows.length);
    } catch (err) {
      M.markError(node, err);
    }
  }
  async function downloadGreylist() {
    const status = $('greylist-status');
    status.className = 'status';
    status.textContent = '';
    try {
      await M.download('greylist.csv?since=' + greylistSince(), 'greylist.csv');
      status.textContent = 'greylist.csv saved (last ' + greylistSince() + ')';
    } catch (err) {
      status.className = 'status error';
      status.textContent = 'CSV failed: ' + err.message;
    }
  }

  function init() {
    $('events-form').addEventListener('submit', (ev) => { ev.preventDefault(); resetPaging(); loadEvents(); });
    $('ev-older').addEventListener('click', () => {
      if (!paging.next) return;
      paging.cursors.push(paging.next);
      loadEvents();
    });
    $('ev-newer').addEventListener('click', () => {
      if (paging.cursors.length > 1) paging.cursors.pop();
      loadEvents();
    });
    $('event-close').addEventListener('click', () => { $('event-view').hidden = true; });
    $('greylist-csv').addEventListener('click', downloadGreylist);
  }

  Object.assign(M, {loadEvents, resetPaging, openEvent, loadGreylist, initEvents: init});
})();
