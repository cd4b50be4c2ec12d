// The Vercel AI SDK's generateImage (@ai-sdk/openai) against the Images API:
//   node ai_sdk_images_check.mjs BASE_URL API_KEY PICTURE.png
// An edit (an input picture: multipart, no response_format), a gpt-image-1 generation (no
// response_format either) and a Kolors generation of two (two calls of one: the SDK's limit for an
// id it does not know). Prints one JSON line: each part's pictures as {bytes, mediaType, png}, or
// {error} when it threw.
import { readFileSync } from 'node:fs';
import { generateImage } from 'ai';
import { createOpenAI } from '@ai-sdk/openai';

const [baseURL, apiKey, picturePath] = process.argv.slice(2);
const openai = createOpenAI({ baseURL: `${baseURL}/v1`, apiKey });
const picture = readFileSync(picturePath);

const isPng = (bytes) => bytes[0] === 0x89 && bytes[1] === 0x50 && bytes[2] === 0x4e && bytes[3] === 0x47;

async function part(options) {
  try {
    const result = await generateImage({ maxRetries: 0, ...options });
    return result.images.map((image) => ({
      bytes: image.uint8Array.length,
      mediaType: image.mediaType,
      png: isPng(image.uint8Array),
    }));
  } catch (error) {
    return { error: `${error.constructor.name}: ${error.message}` };
  }
}

console.log(
  JSON.stringify({
    edit: await part({
      model: openai.image('Qwen/Qwen-Image-Edit-2509'),
      prompt: { text: 'make the sky blue', images: [picture] },
    }),
    gptImage: await part({ model: openai.image('gpt-image-1'), prompt: 'a red fox', size: '1024x1024' }),
    kolors: await part({ model: openai.image('Kwai-Kolors/Kolors'), prompt: 'a red fox', n: 2 }),
  }),
);
