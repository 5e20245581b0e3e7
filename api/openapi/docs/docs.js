// Renders the API's OpenAPI 3.1 document into this page.
// DOM calls and text nodes only: nothing from the document is ever parsed as HTML.
'use strict';

(() => {
  const SPEC_URL = '/api/v1/openapi.json';
  const METHODS = ['get', 'put', 'post', 'patch', 'delete', 'head', 'options', 'trace'];
  const MAX_DEPTH = 12; // nesting limit for schemas, on top of the cycle guard
  const BOUNDS = [['minimum', '≥'], ['exclusiveMinimum', '>'], ['maximum', '≤'], ['exclusiveMaximum', '<'],
    ['minLength', 'min length'], ['maxLength', 'max length'], ['minItems', 'min items'], ['maxItems', 'max items']];
  let spec = {};

  // ---- DOM helpers ----
  // el('div', 'cls', child, 'text', [more]): children are nodes, strings or arrays; null is skipped.
  function el(tag, cls, ...kids) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    return add(node, kids);
  }

  // Appends children (nested arrays flattened) and returns the node.
  function add(node, ...kids) {
    for (const kid of kids) {
      if (kid == null || kid === false) continue;
      if (Array.isArray(kid)) add(node, ...kid);
      else if (typeof kid === 'object') node.appendChild(kid);
      else node.appendChild(document.createTextNode(String(kid)));
    }
    return node;
  }

  const link = (href, ...kids) => Object.assign(el('a', null, kids), { href });
  const show = (v) => (typeof v === 'string' && v !== '' ? v : JSON.stringify(v));
  const code = (v) => el('code', null, show(v));

  // Text whose `backtick` spans become <code>; an unpaired backtick stays literal.
  function inline(text) {
    const parts = String(text == null ? '' : text).split('`');
    if (parts.length % 2 === 0) { // an odd count of backticks: the last one is literal
      const last = parts.pop();
      parts.push(parts.pop() + '`' + last);
    }
    return parts.map((part, i) => (i % 2 ? el('code', null, part) : part));
  }

  // A plain-text description: one <p> per paragraph (paragraphs end at blank lines).
  function prose(text, cls = 'prose') {
    if (!text) return null;
    const paras = String(text).split(/\n[ \t]*\n/).map((p) => p.trim()).filter(Boolean);
    return el('div', cls, paras.map((p) => el('p', null, inline(p))));
  }

  // ---- References ----
  // One step of a JSON pointer, unescaped.
  function token(raw) {
    let t = raw;
    try { t = decodeURIComponent(raw); } catch (_) { /* keep it as written */ }
    return t.replace(/~1/g, '/').replace(/~0/g, '~');
  }

  // The value at a local JSON pointer such as '#/components/schemas/Error'.
  function lookup(ref) {
    if (typeof ref !== 'string' || !ref.startsWith('#/')) return undefined;
    let node = spec;
    for (const key of ref.slice(2).split('/').map(token)) {
      if (node == null || typeof node !== 'object' || !Object.prototype.hasOwnProperty.call(node, key)) return undefined;
      node = node[key];
    }
    return node;
  }

  // Follows a $ref chain. `path` holds the refs already open above (the cycle guard).
  // Keywords beside a $ref (e.g. a description) win over the target's.
  function resolve(node, path = new Set()) {
    const refs = [];
    let name = null;
    while (node && typeof node === 'object' && typeof node.$ref === 'string') {
      const ref = node.$ref;
      name = name || token(ref.split('/').pop());
      if (path.has(ref) || refs.includes(ref)) return { node: {}, name, refs, cycle: true };
      const target = lookup(ref);
      if (target == null) return { node: { description: `Unresolved reference ${ref}` }, name, refs, cycle: false };
      refs.push(ref);
      const { $ref, ...rest } = node;
      node = Object.keys(rest).length ? { ...target, ...rest } : target;
    }
    return { node: node && typeof node === 'object' ? node : {}, name, refs, cycle: false };
  }

  // The refs open above a schema's children: its own ones added.
  const extend = (path, refs) => (refs.length ? new Set([...path, ...refs]) : path);

  // ---- Schemas ----
  const isNull = (s) => s && typeof s === 'object' && (s.type === 'null' || s.const === null);

  function typesOf(s) {
    if (Array.isArray(s.type)) return s.type;
    if (typeof s.type === 'string') return [s.type];
    if (s.properties || s.additionalProperties !== undefined) return ['object'];
    return s.items ? ['array'] : [];
  }

  // allOf parts merged into one object: every part's fields and required names.
  function mergeAllOf(s, path) {
    const out = { ...s, properties: { ...(s.properties || {}) }, required: [...(s.required || [])] };
    delete out.allOf;
    for (const part of s.allOf) {
      const r = resolve(part, path);
      if (r.cycle) continue;
      const p = Array.isArray(r.node.allOf) ? mergeAllOf(r.node, extend(path, r.refs)) : r.node;
      Object.assign(out.properties, p.properties || {});
      out.required.push(...(p.required || []));
      if (out.additionalProperties === undefined) out.additionalProperties = p.additionalProperties;
      if (!out.type && p.type) out.type = p.type;
    }
    return out;
  }

  // A schema ready to show: $ref followed, null alternatives turned into "nullable", allOf merged.
  function normalize(schema, path) {
    const r = resolve(schema, path);
    let { node: s, name, cycle } = r;
    let nullable = false;
    const refs = [...r.refs];
    const key = s.oneOf ? 'oneOf' : 'anyOf';
    if (!cycle && Array.isArray(s[key]) && s[key].some(isNull)) {
      const rest = s[key].filter((a) => !isNull(a));
      nullable = true;
      if (rest.length === 1) { // "X or null": show X in place
        const { oneOf, anyOf, ...outer } = s;
        const inner = resolve(rest[0], extend(path, refs));
        s = { ...inner.node, ...outer };
        name = name || inner.name;
        refs.push(...inner.refs);
        cycle = inner.cycle;
      } else {
        s = { ...s, [key]: rest };
      }
    }
    if (!cycle && Array.isArray(s.allOf)) s = mergeAllOf(s, extend(path, refs));
    const types = typesOf(s);
    if (types.includes('null')) nullable = true;
    return { s, name, refs, cycle, nullable, types: types.filter((t) => t !== 'null') };
  }

  // One line of type: "string (uuid)", "WorkOrder (object)", "array of WorkOrder (object)".
  function typeText(n, path) {
    if (n.cycle) return `${n.name || 'schema'} (recursive, see above)`;
    const s = n.s;
    let t;
    if (n.types.includes('array')) {
      const inner = extend(path, n.refs);
      t = 'array of ' + (s.items ? typeText(normalize(s.items, inner), inner) : 'anything');
    } else {
      const alts = s.oneOf || s.anyOf;
      t = n.types.join(' | ');
      if (!t && Array.isArray(alts)) t = `${s.oneOf ? 'one' : 'any'} of ${alts.length} shapes`;
      if (!t) t = 'const' in s ? typeof s.const : 'any';
      if (s.format) t += ` (${s.format})`;
    }
    return n.name ? `${n.name} (${t})` : t;
  }

  // Small labelled facts: nullable, enum, const, default, bounds, pattern, no other fields.
  function facets(n, path) {
    const s = n.s;
    const out = [];
    const flag = (text, cls = '') => out.push(el('span', `facet ${cls}`, text));
    const put = (label, ...vals) => out.push(el('span', 'facet', label, vals.map((v) => [' ', code(v)])));
    if (n.nullable) flag('nullable', 'nullable');
    if (n.cycle) return out;
    if (Array.isArray(s.enum)) put('one of', ...s.enum);
    if ('const' in s) put('always', s.const);
    if ('default' in s) put('default', s.default);
    for (const [key, label] of BOUNDS) if (key in s) put(label, s[key]);
    if (s.pattern) put('pattern', s.pattern);
    if (s.propertyNames && s.propertyNames.pattern) put('keys match', s.propertyNames.pattern);
    if (s.additionalProperties === false) flag('no other fields');
    if (s.deprecated) flag('deprecated', 'deprecated');
    if ('example' in s && (s.example === null || typeof s.example !== 'object')) put('e.g.', s.example);
    if (n.types.includes('array') && s.items) {
      const inner = extend(path, n.refs);
      const itemFacets = facets(normalize(s.items, inner), inner);
      if (itemFacets.length) out.push(el('span', 'facet-group', 'items:', itemFacets));
    }
    return out;
  }

  // What is nested in a schema: its fields, its items' fields, or its alternatives.
  function schemaBody(n, path, depth) {
    if (n.cycle) return null;
    if (depth > MAX_DEPTH) return el('p', 'muted', '… nested too deep to show');
    const s = n.s;
    const inner = extend(path, n.refs);
    if (n.types.includes('array')) return s.items ? schemaBody(normalize(s.items, inner), inner, depth + 1) : null;
    const parts = [];
    const alts = s.oneOf || s.anyOf;
    if (Array.isArray(alts)) {
      parts.push(el('div', 'alts', el('div', 'alts-label', s.oneOf ? 'One of:' : 'Any of:'),
        el('ol', 'alt-list', alts.map((a) => el('li', null, schemaView(a, inner, depth + 1))))));
    }
    const props = s.properties || {};
    const required = new Set(s.required || []);
    const rows = Object.keys(props).map((key) =>
      schemaView(props[key], inner, depth + 1, { name: key, required: required.has(key) }));
    const extra = s.additionalProperties;
    if (extra && typeof extra === 'object') rows.push(schemaView(extra, inner, depth + 1, { name: '‹any other key›' }));
    if (rows.length) parts.push(el('ul', 'fields', rows));
    return parts.length ? parts : null;
  }

  // A schema as a block; with a label it is one field (an <li>) of its parent's list.
  function schemaView(schema, path, depth, label) {
    const n = normalize(schema, path);
    const head = el('div', 'field-head',
      label && el('code', 'fname', label.name),
      label && label.required && el('span', 'req', 'required'),
      el('span', 'type', typeText(n, path)), facets(n, path));
    return el(label ? 'li' : 'div', label ? 'field' : 'schema', head, prose(n.s.description, 'desc'),
      schemaBody(n, path, depth));
  }

  // ---- Operations ----
  // An example: JSON pretty-printed, strings (CSV, event streams, ...) as they are.
  function exampleBlock(title, value, description) {
    const text = value === undefined ? '' : typeof value === 'string' ? value : JSON.stringify(value, null, 2);
    return el('div', 'example', el('div', 'example-title', title), prose(description, 'desc'),
      el('pre', null, el('code', null, text)));
  }

  function examplesView(media) {
    const out = 'example' in media ? [exampleBlock('Example', media.example)] : [];
    for (const [key, raw] of Object.entries(media.examples || {})) {
      const ex = resolve(raw).node;
      const value = 'value' in ex ? ex.value : ex.externalValue ? `(see ${ex.externalValue})` : undefined;
      out.push(exampleBlock(`Example: ${ex.summary || key}`, value, ex.description));
    }
    return out;
  }

  // Each media type of a body: its schema, then its example(s).
  function contentView(content) {
    return Object.entries(content || {}).map(([type, media]) => el('div', 'media',
      el('div', 'media-type', 'Media type ', el('code', null, type)),
      media && media.schema && schemaView(media.schema, new Set(), 0),
      media && examplesView(media)));
  }

  function tableView(cls, headings, rows) {
    return el('table', cls, el('thead', null, el('tr', null, headings.map((h) => el('th', null, h)))),
      el('tbody', null, rows));
  }

  // A table cell with a schema's type and facets (parameters and headers).
  function typeCell(schema, ...more) {
    if (!schema) return el('td', null, more);
    const n = normalize(schema, new Set());
    return el('td', null, el('span', 'type', typeText(n, new Set())), ' ', facets(n, new Set()), more);
  }

  function paramsView(params) {
    return tableView('params', ['Name', 'In', 'Required', 'Type', 'Description'], params.map((p) => el('tr', null,
      el('td', null, el('code', null, p.name || '?'), p.deprecated && el('span', 'facet deprecated', 'deprecated')),
      el('td', null, p.in || ''),
      el('td', null, p.required ? el('span', 'req', 'required') : 'optional'),
      typeCell(p.schema, 'example' in p && el('span', 'facet', 'e.g. ', code(p.example))),
      el('td', null, prose(p.description || (p.schema && normalize(p.schema, new Set()).s.description), 'desc')))));
  }

  function headersView(headers) {
    return tableView('params headers', ['Header', 'Type', 'Description'], Object.entries(headers).map(([name, raw]) => {
      const h = resolve(raw).node;
      return el('tr', null, el('td', null, el('code', null, name)), typeCell(h.schema),
        el('td', null, prose(h.description, 'desc')));
    }));
  }

  function requestBodyView(raw) {
    const body = resolve(raw).node;
    return [el('h4', null, 'Request body ', body.required ? el('span', 'req', 'required') : el('span', 'muted', 'optional')),
      prose(body.description), contentView(body.content)];
  }

  // Every response in a <details>; the success answers start open.
  function responsesView(responses) {
    return Object.entries(responses || {}).map(([status, raw]) => {
      const { node: resp, name } = resolve(raw);
      const box = el('details', 'response', el('summary', null,
        el('span', `status s${String(status)[0]}`, status), ' ', inline(resp.description || ''),
        name && el('span', 'muted', ` · ${name}`)));
      box.open = /^[123]/.test(status);
      const content = contentView(resp.content);
      return add(box, resp.headers && Object.keys(resp.headers).length ? headersView(resp.headers) : null,
        content.length ? content : el('p', 'muted', 'No body.'));
    });
  }

  function operationView(op) {
    const o = op.o;
    const security = Array.isArray(o.security) ? o.security : Array.isArray(spec.security) ? spec.security : [];
    const auth = security.length === 0 ? el('span', 'auth open', 'No authentication')
      : el('span', 'auth', 'Authentication: ', security.map((req) => Object.keys(req).join(' + ') || 'optional').join(' or '));
    const section = el('section', 'op',
      el('div', 'op-head', el('span', `method m-${op.method}`, op.method.toUpperCase()), ' ',
        el('code', 'path', op.path), auth, o.deprecated && el('span', 'facet deprecated', 'deprecated')),
      el('h3', 'op-summary', o.summary || op.path),
      el('div', 'op-id muted', 'operationId ', el('code', null, o.operationId || op.id)),
      prose(o.description),
      op.params.length ? [el('h4', null, 'Parameters'), paramsView(op.params)] : null,
      o.requestBody ? requestBodyView(o.requestBody) : null,
      el('h4', null, 'Responses'), responsesView(o.responses));
    section.id = op.id;
    return section;
  }

  // Path-level parameters, overridden by the operation's own (same name and place).
  function mergeParams(pathParams, opParams) {
    const params = [...(pathParams || []), ...(opParams || [])].map((raw) => resolve(raw).node);
    return [...new Map(params.map((p) => [`${p.in}:${p.name}`, p])).values()];
  }

  function collectOperations() {
    const ops = [];
    const ids = new Set();
    for (const [path, raw] of Object.entries(spec.paths || {})) {
      const item = resolve(raw).node;
      for (const method of METHODS) {
        const o = item[method];
        if (!o || typeof o !== 'object') continue;
        let id = o.operationId || `${method}-${path}`.replace(/[^A-Za-z0-9_-]+/g, '-');
        while (ids.has(id)) id += '_';
        ids.add(id);
        const hay = [method, path, o.summary, o.operationId].join(' ').toLowerCase();
        ops.push({ method, path, o, id, hay, params: mergeParams(item.parameters, o.parameters) });
      }
    }
    return ops;
  }

  // Groups in the order of the document's tags; an operation sits under its first tag.
  function groupByTag(ops) {
    const groups = new Map();
    for (const tag of spec.tags || []) if (tag && tag.name) groups.set(tag.name, { tag, ops: [] });
    for (const op of ops) {
      const name = (op.o.tags && op.o.tags[0]) || 'other';
      if (!groups.has(name)) groups.set(name, { tag: { name }, ops: [] });
      groups.get(name).ops.push(op);
    }
    return [...groups.values()].filter((g) => g.ops.length);
  }

  // ---- Page sections ----
  function introView() {
    const info = spec.info || {};
    return el('header', 'intro', el('h1', null, info.title || 'API'),
      el('p', 'version', `Version ${info.version || '?'}`, spec.openapi && ` · OpenAPI ${spec.openapi}`,
        ' · ', link(SPEC_URL, 'OpenAPI document (JSON)')),
      info.summary && el('p', 'lead', inline(info.summary)),
      prose(info.description));
  }

  // The error format: the Error schema, one example, and the shared error responses.
  function errorsView() {
    const components = spec.components || {};
    if (!components.schemas || !components.schemas.Error) return null;
    const responses = Object.entries(components.responses || {}).map(([name, raw]) => [name, resolve(raw).node]);
    const json = (r) => r.content && r.content['application/json'];
    const sample = responses.find(([, r]) => json(r) && 'example' in json(r));
    const section = el('section', 'topic', el('h2', null, 'Errors'),
      el('p', null, 'Every error answers with this body:'),
      schemaView({ $ref: '#/components/schemas/Error' }, new Set(), 0),
      sample && exampleBlock(`Example (${sample[0]})`, json(sample[1]).example),
      responses.length > 0 && [el('h3', null, 'Shared error responses'), tableView('params', ['Name', 'Description'],
        responses.map(([name, r]) => el('tr', null, el('td', null, el('code', null, name)),
          el('td', null, prose(r.description, 'desc')))))]);
    section.id = 'errors';
    return section;
  }

  // Shows only the operations whose method, path, summary or operationId hold every word typed.
  function applyFilter(query, ops, groups, counter) {
    const terms = query.toLowerCase().split(/\s+/).filter(Boolean);
    let shown = 0;
    for (const op of ops) {
      const match = terms.every((t) => op.hay.includes(t));
      op.navItem.hidden = op.section.hidden = !match;
      if (match) shown += 1;
    }
    for (const g of groups) g.navEl.hidden = g.sectionEl.hidden = g.ops.every((op) => op.section.hidden);
    counter.textContent = terms.length ? `${shown} of ${ops.length} operations` : `${ops.length} operations`;
  }

  // ---- Page ----
  function render(doc) {
    spec = doc && typeof doc === 'object' ? doc : {};
    const [main, nav, counter, filter] = ['content', 'nav', 'count', 'filter'].map((id) => document.getElementById(id));
    const ops = collectOperations();
    const groups = groupByTag(ops);
    if (spec.info && spec.info.title) document.title = `${spec.info.title} — documentation`;
    main.textContent = '';
    add(main, introView(), errorsView());
    add(nav, el('ul', 'nav-topics', el('li', null, link('#errors', 'Error format'))));
    for (const g of groups) {
      g.sectionEl = el('section', 'tag-group', el('h2', null, g.tag.name), prose(g.tag.description, 'desc'),
        g.ops.map((op) => (op.section = operationView(op))));
      g.sectionEl.id = `tag-${g.tag.name}`;
      g.navEl = el('div', 'nav-group', el('div', 'nav-tag', link(`#tag-${g.tag.name}`, g.tag.name)),
        el('ul', null, g.ops.map((op) => (op.navItem = el('li', null, link(`#${op.id}`,
          el('span', `method m-${op.method}`, op.method.toUpperCase()), ' ',
          el('span', 'nav-path', op.path), ' — ', el('span', 'nav-summary', op.o.summary || '')))))));
      add(main, g.sectionEl);
      add(nav, g.navEl);
    }
    filter.addEventListener('input', () => applyFilter(filter.value, ops, groups, counter));
    applyFilter(filter.value, ops, groups, counter);
    // The content arrived after the page loaded: honour a #fragment now.
    const target = location.hash && document.getElementById(decodeURIComponent(location.hash.slice(1)));
    if (target && target.scrollIntoView) target.scrollIntoView();
  }

  function showError(message) {
    const main = document.getElementById('content');
    main.textContent = '';
    document.getElementById('filter').disabled = true;
    add(main, el('div', 'error', el('h1', null, 'The API description could not be shown'), el('p', null, message)));
  }

  // Printing opens every response, then puts the page back as it was.
  let closedForPrint = [];
  window.addEventListener('beforeprint', () => {
    closedForPrint = [...document.querySelectorAll('details:not([open])')];
    closedForPrint.forEach((d) => { d.open = true; });
  });
  window.addEventListener('afterprint', () => closedForPrint.forEach((d) => { d.open = false; }));

  // Loads the document, then renders it; any failure is told on the page.
  async function main() {
    let step = `Loading ${SPEC_URL}`;
    try {
      const res = await fetch(SPEC_URL, { headers: { Accept: 'application/json' } });
      if (!res.ok) throw new Error(`the server answered ${res.status} ${res.statusText}`.trim());
      const doc = await res.json();
      step = `Rendering ${SPEC_URL}`;
      render(doc);
    } catch (e) {
      showError(`${step} failed: ${e && e.message ? e.message : e}. Reload the page to try again.`);
      console.error(e);
    }
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', main);
  else main();
})();
