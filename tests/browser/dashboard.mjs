// Real-browser test of the Sluice dashboard (src/api/dashboard.html), run by
// tests/browser.rs against a live `sluice serve`. Debian's chromium, driven by
// playwright-core (no browser download): submit an application, watch its rows and
// chart arrive over the WebSocket, check the query list and a positioned SQL error,
// run ad hoc SQL over an archive of the readings, see a stream whose broker is
// unreachable as retrying with the reason and a query's bad records with theirs, and
// save a full-page screenshot.
//
//   node tests/browser/dashboard.mjs [BASE_URL] [SCREENSHOT.png]
//
// BASE_URL defaults to $SLUICE_URL or http://127.0.0.1:8080; the screenshot to
// $SCREENSHOT or dashboard.png. Exits 0 when every check passed, 1 with a message
// on the first failure. $CHROMIUM overrides /usr/bin/chromium.

import { chromium } from 'playwright-core';

const base = (process.argv[2] || process.env.SLUICE_URL || 'http://127.0.0.1:8080').replace(/\/$/, '');
const screenshot = process.argv[3] || process.env.SCREENSHOT || 'dashboard.png';
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';

/** Windows of one second on a fast simulator: the first rows arrive within ~3 s. */
const APP = `CREATE STREAM b_readings (
    deviceId INT NOT NULL, temperature DOUBLE, humidity DOUBLE, deviceIP TEXT, ts TIMESTAMP,
    WATERMARK FOR ts AS ts - INTERVAL '1' SECOND
) WITH (connector = 'simulator', devices = '5', rate = '500', idle_timeout = '2s');
CREATE QUERY browser_q AS
SELECT window_start, deviceId, count(*) AS n, avg(temperature) AS avg_temp
FROM b_readings
GROUP BY TUMBLE(ts, INTERVAL '1' SECOND), deviceId;
`;

/** An archive of the same readings, for the ad hoc SQL panel (flushed every second). */
const ARCHIVE = `CREATE SINK b_archive WITH (connector = 'archive', flush_interval = '1s');
CREATE QUERY b_arch AS INSERT INTO b_archive SELECT deviceId, temperature, ts FROM b_readings;
`;

/**
 * Bad input and an outage: an `http` stream whose records we post (some malformed),
 * and an MQTT stream whose broker does not exist (port 1 refuses connections).
 */
const TROUBLE = `CREATE STREAM b_http (deviceId INT NOT NULL, temperature DOUBLE) WITH (connector = 'http');
CREATE QUERY b_bad AS SELECT deviceId, temperature FROM b_http;
CREATE STREAM b_down (deviceId INT) WITH (connector = 'mqtt', url = 'mqtt://127.0.0.1:1', topics = 'b/readings');
CREATE QUERY b_down_q AS SELECT deviceId FROM b_down;
`;
const BAD_RECORDS = [
  '{"deviceId": 1, "temperature": "warm"}',
  '{"deviceId": 2, "temperature": 21.5',
  '{"deviceId": 3, "temperature": 22.5}',
].join('\n') + '\n';

/** A mistake on line 3 (a column that does not exist). */
const BAD = `-- a query over a column that does not exist
CREATE QUERY broken AS
SELECT window_start, count(*) AS n, avg(temp) AS avg_temp
FROM b_readings
GROUP BY TUMBLE(ts, INTERVAL '1' SECOND);
`;

const WAIT_ROWS_MS = 30_000;   // first rows and chart points
const WAIT_MS = 10_000;        // everything else
const started = Date.now();
const log = (m) => console.log(`[${((Date.now() - started) / 1000).toFixed(1)}s] ${m}`);

class Failure extends Error {}
function check(ok, message) {
  if (!ok) throw new Failure(message);
}
/** Polls `probe` until it returns a truthy value, or fails with `what` after `ms`. */
async function until(what, ms, probe) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (last) return last;
    } catch (e) {
      last = e.message;
    }
    if (Date.now() > deadline) throw new Failure(`timed out after ${ms / 1000} s waiting for ${what} (last: ${JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

// Whatever happens, never hang the Rust test that runs this.
setTimeout(() => {
  console.error('FAIL: the browser test took longer than 120 s');
  process.exit(1);
}, 120_000).unref();

const pageErrors = [];
let browser;
try {
  browser = await chromium.launch({
    executablePath,
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
  log(`chromium ${browser.version()}`);
  const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
  page.on('pageerror', (e) => pageErrors.push(e.message));
  page.on('console', (m) => {
    if (m.type() === 'error') log(`console error: ${m.text()}`);
  });

  // 1. The page loads and polls the (empty) query list.
  await page.goto(base + '/', { waitUntil: 'load' });
  check((await page.title()) === 'Sluice', `the page title is ${JSON.stringify(await page.title())}, not "Sluice"`);
  await until('the server status to say connected', WAIT_MS, async () =>
    (await page.getByTestId('server-status').textContent()) === 'connected');
  log('dashboard loaded');

  // 2. Paste an application and submit it.
  await page.getByTestId('sql-editor').fill(APP);
  await page.getByTestId('submit').click();
  const applied = await until('the submission to be applied', WAIT_MS, async () => {
    if (await page.getByTestId('submit-error').count()) {
      throw new Failure(`the application was rejected: ${await page.getByTestId('submit-error').innerText()}`);
    }
    return (await page.getByTestId('submit-ok').count()) && page.getByTestId('submit-ok').innerText();
  });
  check(/query\s+browser_q/.test(applied), `the result does not list query browser_q as created: ${applied}`);
  log(`applied: ${applied.replace(/\s+/g, ' ')}`);

  // 3. Select it in the query list and wait for rows and chart points.
  const row = page.locator('[data-testid="query-row"][data-name="browser_q"]');
  await row.waitFor({ timeout: WAIT_MS });
  await row.click();
  await until('the live panel to show browser_q', WAIT_MS, async () =>
    (await page.getByTestId('live-query').textContent()) === 'browser_q');
  const liveState = async () => page.evaluate(() => ({
    rows: document.querySelectorAll('#rows-body tr[data-testid="row"]').length,
    points: Number(document.getElementById('chart').dataset.points),
    windows: Number(document.getElementById('chart').dataset.windows),
    lines: document.querySelectorAll('#chart path[data-testid="chart-line"]').length,
    column: document.getElementById('column').value,
    ws: document.getElementById('ws-status').textContent,
  }));
  const first = await until('rows in the table and points on the chart', WAIT_ROWS_MS, async () => {
    const s = await liveState();
    return s.rows > 0 && s.points > 0 && s.lines > 0 && s;
  });
  log(`first results: ${JSON.stringify(first)}`);
  check(first.column === 'avg_temp', `the chart plots ${JSON.stringify(first.column)}, not avg_temp`);
  check(first.ws === 'live', `the WebSocket status is ${JSON.stringify(first.ws)}, not live`);
  const headers = await page.locator('#rows-head th').allTextContents();
  for (const c of ['window_start', 'deviceId', 'n', 'avg_temp']) {
    check(headers.includes(c), `the rows table has no column ${c} (columns: ${headers.join(', ')})`);
  }
  // A few windows, so the lines (and the screenshot) show something moving.
  const more = await until('three windows on the chart', WAIT_ROWS_MS, async () => {
    const s = await liveState();
    return s.windows >= 3 && s;
  });
  log(`later: ${JSON.stringify(more)}`);

  // 4. The query list shows it running, with records in.
  const listed = await until('browser_q running with records_in > 0 in the query list', WAIT_MS, async () => {
    const status = await row.getByTestId('query-status').textContent();
    const recordsIn = Number(await row.getAttribute('data-records-in'));
    return status === 'running' && recordsIn > 0 && { status, recordsIn };
  });
  log(`query list: ${JSON.stringify(listed)}`);

  // 5. A bad submission shows the server's error at its line and column.
  const expected = await (await fetch(base + '/applications', {
    method: 'POST', headers: { 'Content-Type': 'text/plain' }, body: BAD,
  })).json();
  check(expected.position && expected.position.line === 3,
    `the API did not locate the mistake on line 3: ${JSON.stringify(expected)}`);
  await page.getByTestId('sql-editor').fill(BAD);
  await page.getByTestId('submit').click();
  const title = await until('the positioned error', WAIT_MS, async () =>
    (await page.getByTestId('submit-error').count()) && page.getByTestId('error-title').innerText());
  const { line, column } = expected.position;
  check(title.includes(`line ${line}, column ${column}`), `the error title ${JSON.stringify(title)} does not say line ${line}, column ${column}`);
  const excerpt = await page.getByTestId('error-excerpt').innerText();
  const [shown, caret] = excerpt.split('\n');
  check(shown.includes('avg(temp)'), `the error excerpt does not show line 3: ${JSON.stringify(excerpt)}`);
  check(caret.indexOf('^') === shown.indexOf('|') + 1 + column,
    `the caret is not under column ${column}: ${JSON.stringify(excerpt)}`);
  const message = await page.getByTestId('error-message').innerText();
  check(message === expected.error, `the error message ${JSON.stringify(message)} is not the server's ${JSON.stringify(expected.error)}`);
  check(await page.locator('#gutter span.err').textContent() === String(line), 'the line number of the error is not highlighted');
  log(`error shown: ${title}`);

  // 6. A newcomer: a fresh load selects the running query and shows its latest results
  //    (replayed by the server on connect) within seconds.
  const fresh = await browser.newPage({ viewport: { width: 1440, height: 900 } });
  fresh.on('pageerror', (e) => pageErrors.push(e.message));
  await fresh.goto(base + '/', { waitUntil: 'load' });
  await until('a fresh page to auto-select browser_q and show rows', WAIT_MS, async () =>
    (await fresh.getByTestId('live-query').textContent()) === 'browser_q' &&
    (await fresh.locator('#rows-body tr').count()) > 0);
  await fresh.close();
  log('a fresh page auto-selected browser_q and showed rows');

  // 7. Ad hoc SQL: an archive of the readings appears among the tables; a query over
  //    it answers one row per device once the first flush is written (1 s); a mistake
  //    is shown with its position.
  const archived = await fetch(base + '/applications', {
    method: 'POST', headers: { 'Content-Type': 'text/plain' }, body: ARCHIVE,
  });
  check(archived.status === 201, `the archive application was refused: ${await archived.text()}`);
  const chip = page.getByTestId('adhoc-table').filter({ hasText: 'b_archive' });
  await until('b_archive among the ad hoc tables', WAIT_MS, async () => (await chip.count()) === 1);
  await chip.click();
  check((await page.getByTestId('adhoc-sql').inputValue()).includes('FROM "b_archive"'),
    'clicking a table did not put a query over it in the box');
  await page.getByTestId('adhoc-sql').fill('SELECT deviceId, count(*) AS n\nFROM b_archive GROUP BY deviceId ORDER BY deviceId');
  const devices = await until('one ad hoc row per device', WAIT_ROWS_MS, async () => {
    await page.getByTestId('adhoc-run').click();
    await page.waitForTimeout(300);
    const n = await page.locator('#adhoc-body tr').count();
    return n === 5 && n;
  });
  const status = await page.getByTestId('adhoc-status').textContent();
  check(/^5 rows in [0-9.]+ ms$/.test(status), `the ad hoc status says ${JSON.stringify(status)}`);
  check(JSON.stringify(await page.locator('#adhoc-head th').allTextContents()) === '["deviceId","n"]',
    'the ad hoc table does not show the query\'s columns');
  log(`ad hoc SQL: ${devices} rows (${status})`);
  await page.getByTestId('adhoc-sql').fill('SELECT deviceId\nFROM b_archive WHERE nope > 1');
  await page.getByTestId('adhoc-run').click();
  const adhocError = await until('the ad hoc error', WAIT_MS, async () =>
    (await page.getByTestId('adhoc-error-title').count()) && page.getByTestId('adhoc-error-title').innerText());
  check(adhocError.startsWith('Rejected at line 2, column 22'), `the ad hoc error title is ${JSON.stringify(adhocError)}`);
  check((await page.getByTestId('adhoc-error-message').innerText()).includes('nope'), 'the ad hoc error does not name the column');
  const [shownLine, caretLine] = (await page.getByTestId('adhoc-error-excerpt').innerText()).split('\n');
  check(shownLine.startsWith('2 | FROM b_archive') && caretLine.indexOf('^') === shownLine.indexOf('|') + 1 + 22,
    `the ad hoc caret is not under line 2, column 22: ${JSON.stringify([shownLine, caretLine])}`);
  check((await page.locator('#adhoc-body tr').count()) === 0, 'the rows of the earlier query stay under the error');

  // 8. Health: a stream whose broker is unreachable shows as retrying, with the
  //    reason and the attempts; the archive sink, written by now, as connected.
  const trouble = await fetch(base + '/applications', {
    method: 'POST', headers: { 'Content-Type': 'text/plain' }, body: TROUBLE,
  });
  check(trouble.status === 201, `the application with an unreachable broker was refused: ${await trouble.text()}`);
  const down = page.locator('[data-testid="stream-row"][data-name="b_down"]');
  const retrying = await until('b_down to show as retrying with a reason', WAIT_ROWS_MS, async () => {
    if ((await down.count()) !== 1 || (await down.getAttribute('data-health')) !== 'retrying') return false;
    const pill = await down.getByTestId('stream-health').textContent();
    const reason = await down.getByTestId('stream-reason').textContent();
    return { pill, reason, retries: Number(await down.getAttribute('data-retries')) };
  });
  check(retrying.pill === 'retrying', `the b_down pill says ${JSON.stringify(retrying.pill)}`);
  check(/refused/i.test(retrying.reason), `the b_down reason does not say the connection was refused: ${JSON.stringify(retrying.reason)}`);
  check(retrying.retries >= 1 && /\(\d+ retr(y|ies)\)/.test(retrying.reason), `the b_down retries are not shown: ${JSON.stringify(retrying)}`);
  log(`unreachable broker: ${JSON.stringify(retrying)}`);
  const archiveHealth = await until('b_archive to show as connected', WAIT_MS, async () => {
    const h = await page.locator('[data-testid="sink-row"][data-name="b_archive"]').getAttribute('data-health');
    return h === 'connected' && h;
  });
  check((await page.getByTestId('health-summary').textContent()).includes('1 retrying'),
    `the health summary does not count the retrying stream: ${await page.getByTestId('health-summary').textContent()}`);
  log(`b_archive: ${archiveHealth}`);

  // 9. Bad records: posted to b_http, they appear under b_bad with their reasons, and
  //    a payload expands to the record as it arrived. An idle query shows no lag.
  const ingested = await (await fetch(base + '/streams/b_http/records', {
    method: 'POST', headers: { 'Content-Type': 'application/x-ndjson' }, body: BAD_RECORDS,
  })).json();
  check(ingested.accepted === 1 && ingested.rejected === 2, `the ingest report is ${JSON.stringify(ingested)}`);
  const badRow = page.locator('[data-testid="query-row"][data-name="b_bad"]');
  await until('b_bad to count 2 errors in the query list', WAIT_MS, async () =>
    (await badRow.getByTestId('query-errors').count()) === 1 && (await badRow.getByTestId('query-errors').textContent()) === '2');
  check((await badRow.getByTestId('query-lag').count()) === 0, 'the idle query b_bad shows a lag');
  await badRow.getByTestId('query-errors').click();
  const records = page.locator('[data-testid="bad-record"]');
  const badShown = await until('the two bad records of b_bad', WAIT_MS, async () =>
    (await page.getByTestId('bad-query').textContent()) === 'of b_bad' && (await records.count()) === 2 &&
    records.evaluateAll((rows) => rows.map((r) => ({
      kind: r.dataset.kind,
      reason: r.querySelector('[data-testid="bad-record-reason"]').textContent,
      payload: r.querySelector('[data-testid="bad-record-payload"] pre').textContent,
    }))));
  // Newest first: the two came in one body, so the later line leads.
  check(badShown[0].payload === '{"deviceId": 2, "temperature": 21.5' && badShown[1].payload === '{"deviceId": 1, "temperature": "warm"}',
    `the bad records are not the posted ones, newest first: ${JSON.stringify(badShown)}`);
  for (const r of badShown) check(r.reason.length > 10, `a bad record has no reason: ${JSON.stringify(r)}`);
  check(badShown.some((r) => /warm|Float64|double/i.test(r.reason)), `no reason says what was wrong with "warm": ${JSON.stringify(badShown)}`);
  const summary = await page.getByTestId('bad-summary').textContent();
  check(summary.startsWith('2 errors, 0 late'), `the bad records summary says ${JSON.stringify(summary)}`);
  const payload = records.first().getByTestId('bad-record-payload');
  check(!(await payload.evaluate((d) => d.open)), 'a payload is expanded before it was clicked');
  await payload.locator('summary').click();
  check(await payload.evaluate((d) => d.open), 'clicking a payload did not expand it');
  // The page refreshes every 2 s: an expanded payload stays expanded.
  await page.waitForTimeout(2500);
  check(await records.first().getByTestId('bad-record-payload').evaluate((d) => d.open), 'the refresh folded the expanded payload');
  log(`bad records: ${JSON.stringify(badShown)}`);

  check(pageErrors.length === 0, `the page threw: ${pageErrors.join('; ')}`);

  // 10. The picture: query list, health, bad records, the positioned error.
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: screenshot, fullPage: true });
  log(`screenshot: ${screenshot}`);
  console.log('PASS: dashboard');
} catch (e) {
  console.error(`FAIL: ${e instanceof Failure ? e.message : e.stack || e}`);
  process.exitCode = 1;
} finally {
  if (browser) await browser.close().catch(() => {});
}
