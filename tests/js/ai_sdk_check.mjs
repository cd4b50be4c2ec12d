// The Vercel AI SDK against the service's Responses API: node ai_sdk_check.mjs BASE_URL API_KEY
// `openai(id)` speaks POST /v1/responses. Prints one JSON line: generateText's and streamText's
// text, a second turn that sends the first back (as item_reference items), and the image tool's
// results (base64).
import { createOpenAI } from '@ai-sdk/openai';
import { generateText, streamText } from 'ai';

const [baseURL, apiKey] = process.argv.slice(2);
const openai = createOpenAI({ baseURL: `${baseURL}/v1`, apiKey });
const model = openai('Kwai-Kolors/Kolors');
const common = { model, maxRetries: 0, system: '你是画图助手。' };

const ask = { role: 'user', content: '画一只可爱的猫咪 pic:2' };
const first = await generateText({ ...common, messages: [ask] });
// The SDK sends its earlier answers as item_reference (it takes the server to keep them) …
const again = await generateText({ ...common, messages: [ask, ...first.response.messages, { role: 'user', content: '画一只狗' }] });
// … or, with store: false, as the answer's text, which a follow-up reads the last picture from.
const blue = await generateText({
  ...common,
  messages: [ask, ...first.response.messages, { role: 'user', content: '换成蓝色' }],
  providerOptions: { openai: { store: false } },
});

const errors = [];
const streamed = streamText({ ...common, prompt: '画一只狗', onError: ({ error }) => errors.push(String(error?.message ?? error)) });
let deltas = '';
for await (const part of streamed.fullStream) {
  if (part.type === 'text-delta') deltas += part.text;
  if (part.type === 'error') errors.push(String(part.error?.message ?? JSON.stringify(part.error)));
}

const tools = { image_generation: openai.tools.imageGeneration({ size: '1024x1536' }) };
const drawn = await generateText({ ...common, prompt: '画一只狐狸', tools });
const results = (content) =>
  content.filter((part) => part.type === 'tool-result').map((part) => ({ name: part.toolName, result: part.output?.result }));
const toolStream = streamText({ ...common, prompt: '画一只狐狸', tools });
for await (const part of toolStream.fullStream) {
  if (part.type === 'error') errors.push(String(part.error?.message ?? JSON.stringify(part.error)));
}

console.log(
  JSON.stringify({
    generate: { text: first.text, finish: first.finishReason, usage: first.usage, id: first.response.id },
    again: { text: again.text, sent: first.response.messages.length },
    blue: { text: blue.text },
    stream: { text: deltas, finalText: await streamed.text, finish: await streamed.finishReason },
    tool: { text: drawn.text, results: results(drawn.content) },
    toolStream: { text: await toolStream.text, results: results(await toolStream.content), finish: await toolStream.finishReason },
    errors,
  }),
);
