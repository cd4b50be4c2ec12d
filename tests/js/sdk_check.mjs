// Runs the official OpenAI JS SDK against the service: node sdk_check.mjs BASE_URL API_KEY
// Prints one JSON line: {"content": <streamed chat text>, "images": <urls from images.generate>}.
import OpenAI from 'openai';

const [baseURL, apiKey] = process.argv.slice(2);
const openai = new OpenAI({ baseURL: `${baseURL}/v1`, apiKey, maxRetries: 0, timeout: 60_000 });

const stream = await openai.chat.completions.create({
  model: 'Kwai-Kolors/Kolors',
  messages: [{ role: 'user', content: '画一只可爱的猫咪，9:16比例 pic:2' }],
  stream: true,
});
let content = '';
let finish = null;
for await (const chunk of stream) {
  content += chunk.choices[0]?.delta?.content ?? '';
  finish = chunk.choices[0]?.finish_reason ?? finish;
}
const images = await openai.images.generate({ model: 'Kwai-Kolors/Kolors', prompt: 'a red fox', n: 2 });
let authError = null;
try {
  await new OpenAI({ baseURL: `${baseURL}/v1`, apiKey: 'wrong', maxRetries: 0 }).models.list();
} catch (error) {
  authError = error.constructor.name;
}
console.log(JSON.stringify({ content, finish, images: images.data.map((item) => item.url), authError }));
