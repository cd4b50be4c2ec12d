// Drives the upstream keys on the operator's page in headless Chromium:
//   node upstream_keys_check.mjs URL ADMIN_KEY SCREENSHOT_DIR KEYS_JSON
// KEYS_JSON names the keys: "good", "dead", "phone" whole, to paste; their masks ("goodMasked", ...), "restingMasked",
// "disable" and "remove" as the table shows them. On the desktop: a malformed paste is refused with its message, two keys are pasted (one as team/…) with
// Ctrl+Enter, one is tested good and the dead one tested dead, one disabled, one removed, one given an account with Enter.
// On the phone: one key pasted with the button. Prints one JSON line: what the page said at each step and its whole text.
import { chromium } from 'playwright-core';

const [url, adminKey, shots, keysJson] = process.argv.slice(2);
const keys = JSON.parse(keysJson);
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-sync'],
});
const result = { texts: [], htmls: [] };
const text = (selector) => (page) => page.textContent(selector);
const row = (page, masked) => page.locator('#keys tr', { hasText: masked });
const seen = async (page) => {  // everything the page shows or holds, to look for a whole key in
  result.texts.push(await page.evaluate(() => document.body.innerText));
  result.htmls.push(await page.content());
  result.boxes = [...(result.boxes || []), await page.inputValue('#pasteKeys')];
};

try {
  for (const [name, viewport] of [['desktop', { width: 1280, height: 900 }], ['phone', { width: 390, height: 844 }]]) {
    const page = await browser.newPage({ viewport });
    const errors = [];
    page.on('pageerror', (error) => errors.push(error.message));
    const dialogs = [];
    page.on('dialog', (dialog) => { dialogs.push(dialog.message()); dialog.accept(); });
    await page.goto(`${url}/admin`);
    await page.fill('#adminKey', adminKey);
    await page.click('#enter');
    await page.waitForFunction(() => document.querySelectorAll('#keys tr').length >= 3);
    result[`${name}Head`] = await page.$eval('#keys', (body) => body.closest('table').querySelector('thead').textContent);
    if (name === 'desktop') {
      result.balances = await text('#balances')(page);
      // A malformed paste: its message, and nothing added.
      await page.fill('#pasteKeys', 'a/b/c');
      await page.click('#addKeys');
      await page.waitForFunction(() => !document.querySelector('#pasted').hidden && document.querySelector('#pasted').textContent);
      result.refused = await text('#pasted')(page);
      // Two keys as a forum post has them, Ctrl+Enter in the box.
      await page.fill('#pasteKeys', `${keys.good},\nteam/${keys.dead}`);
      await page.press('#pasteKeys', 'Control+Enter');
      await page.waitForFunction(() => document.querySelector('#pasted').textContent.includes('已添加 2'));
      result.pasted = await text('#pasted')(page);
      result.boxAfterAdd = await page.inputValue('#pasteKeys');
      await page.waitForFunction((masked) => masked.every((m) => document.querySelector('#keys').textContent.includes(m)), [keys.goodMasked, keys.deadMasked]);
      result.goodRow = await row(page, keys.goodMasked).textContent();
      result.deadRow = await row(page, keys.deadMasked).textContent();
      result.restingRow = await row(page, keys.restingMasked).textContent();
      // Test: the good key is taken, the dead one is dead.
      await row(page, keys.goodMasked).getByRole('button', { name: /test/ }).click();
      await row(page, keys.goodMasked).getByText('SiliconFlow takes this key').waitFor();
      result.testedGood = await row(page, keys.goodMasked).textContent();
      await row(page, keys.deadMasked).getByRole('button', { name: /test/ }).click();
      await row(page, keys.deadMasked).getByText('dead (401)').waitFor();
      result.testedDead = await row(page, keys.deadMasked).textContent();
      // Disable one, remove one (confirmed), name one's account with Enter.
      await row(page, keys.disable).getByRole('button', { name: /disable/ }).click();
      await row(page, keys.disable).getByText('已停用 disabled').waitFor();
      result.disabledRow = await row(page, keys.disable).textContent();
      await row(page, keys.remove).getByRole('button', { name: /remove/ }).click();
      await page.waitForFunction((masked) => !document.querySelector('#keys').textContent.includes(masked), keys.remove);
      await row(page, keys.goodMasked).getByRole('button', { name: /account/ }).click();
      await row(page, keys.goodMasked).locator('input').fill('friends');
      await row(page, keys.goodMasked).locator('input').press('Enter');
      await page.waitForFunction(
        (masked) => [...document.querySelectorAll('#keys tr')].some((tr) => tr.textContent.includes(masked) && tr.textContent.includes('friends') && !tr.querySelector('input')),
        keys.goodMasked);
      result.namedRow = await row(page, keys.goodMasked).textContent();
    } else {
      // On a phone: one key, the button.
      await page.fill('#pasteKeys', keys.phone);
      await page.click('#addKeys');
      await page.waitForFunction(() => document.querySelector('#pasted').textContent.includes('已添加 1'));
      result.phonePasted = await text('#pasted')(page);
      await page.waitForFunction((masked) => document.querySelector('#keys').textContent.includes(masked), keys.phoneMasked);
    }
    result[`${name}Overflow`] = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
    // The keys fit their box: no sideways scrolling to reach a key's buttons.
    result[`${name}KeysFit`] = await page.$eval('#keys', (body) => { const box = body.closest('section'); return box.scrollWidth <= box.clientWidth + 1; });
    result[`${name}Errors`] = errors;
    result[`${name}Dialogs`] = dialogs;
    await seen(page);
    await page.screenshot({ path: `${shots}/upstream-keys-${name}.png`, fullPage: true });
    await seen(page);
    result.url = page.url();
    await page.close();
  }
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));
