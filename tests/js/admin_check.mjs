// Drives the operator's page in headless Chromium: node admin_check.mjs URL ADMIN_KEY SCREENSHOT_DIR
// Enters the admin key (Enter in the key box on the desktop, the button on the phone), reads the
// tables (user keys with their spend, the 30 days of spend) and the chart, makes a key with Enter
// in the form and revokes it. Prints one JSON line.
import { chromium } from 'playwright-core';

const [url, adminKey, shots] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-sync'],
});
const result = {};
try {
  for (const [name, viewport] of [['desktop', { width: 1280, height: 900 }], ['phone', { width: 390, height: 844 }]]) {
    const page = await browser.newPage({ viewport });
    const errors = [];
    page.on('pageerror', (error) => errors.push(error.message));
    page.on('dialog', (dialog) => dialog.accept());
    await page.goto(`${url}/admin`);
    await page.fill('#adminKey', adminKey);
    if (name === 'desktop') await page.keyboard.press('Enter');  // as a person does after pasting it
    else await page.click('#enter');
    await page.waitForFunction(() => document.querySelectorAll('#users tr').length >= 1 && document.querySelectorAll('#keys tr').length >= 1);
    result.users = await page.textContent('#users');
    result.upstream = await page.textContent('#keys');
    await page.waitForFunction(() => document.querySelectorAll('#spend tr').length >= 1);
    result.spendRows = await page.$$eval('#spend tr', (rows) => rows.map((row) => row.textContent));
    result.spendNote = await page.textContent('#spendNote');
    result.spendTotals = await page.textContent('#spendTotals');
    result.usersHead = await page.$eval('#users', (body) => body.closest('table').querySelector('thead').textContent);
    result.bars = await page.$$eval('#chart rect', (rects) => rects.length);
    result.html = await page.content();
    result.url = page.url();
    result.overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
    if (name === 'desktop') {
      result.friendRow = await page.locator('#users tr', { hasText: 'friend' }).textContent();
      await page.fill('#name', 'classmate');
      await page.fill('#dailyImages', '5');
      await page.fill('#dailyVideos', '2');
      await page.keyboard.press('Enter');
      await page.waitForFunction(() => document.querySelector('#secret').textContent.includes('sfk-'));
      result.made = (await page.textContent('#secret')).split(': ').pop().trim();
      await page.waitForFunction(() => document.querySelector('#users').textContent.includes('classmate'));
      result.madeListed = !(await page.textContent('#users')).includes(result.made);
      const row = page.locator('#users tr', { hasText: 'classmate' });
      result.madeRow = await row.textContent();
      await row.locator('button.danger').click();
      await page.waitForFunction(() => !document.querySelector('#users').textContent.includes('classmate'));
      result.revoked = true;
    }
    result.errors = errors;
    await page.screenshot({ path: `${shots}/admin-${name}.png`, fullPage: true });
    await page.close();
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
