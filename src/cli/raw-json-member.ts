/**
 * The exact source text of one member of a JSON object. `submit` sends each line's `body` as it was written rather
 * than JSON.parse + JSON.stringify, which would round integers above 2^53 (seeds, ids), turn 1.0 into 1 and rewrite
 * escapes: the backend should see what the user wrote.
 */

const ws = new Set([" ", "\t", "\n", "\r"]);

/**
 * Returns the text of the value of `key` in the top-level object `text`, or undefined when the key is absent.
 * `text` MUST already be known to be valid JSON whose top level is an object (the caller parsed it). As with
 * JSON.parse, the last occurrence of a duplicated key wins.
 */
export function rawMember(text: string, key: string): string | undefined {
  let i = skipWs(text, 0) + 1; // past "{"
  let found: string | undefined;
  for (;;) {
    i = skipWs(text, i);
    if (text[i] === "}") return found;
    const keyEnd = stringEnd(text, i);
    const name = JSON.parse(text.slice(i, keyEnd)) as string;
    i = skipWs(text, keyEnd) + 1; // past ":"
    i = skipWs(text, i);
    const valueEnd = valueEndAt(text, i);
    if (name === key) found = text.slice(i, valueEnd);
    i = skipWs(text, valueEnd);
    if (text[i] === ",") i++;
  }
}

function skipWs(text: string, i: number): number {
  while (ws.has(text[i]!)) i++;
  return i;
}

/** Index just past the string literal starting at `i` (which is a `"`). */
function stringEnd(text: string, i: number): number {
  for (let j = i + 1; ; j++) {
    const c = text[j];
    if (c === "\\") j++;
    else if (c === '"') return j + 1;
  }
}

/** Index just past the JSON value starting at `i`. */
function valueEndAt(text: string, i: number): number {
  const c = text[i];
  if (c === '"') return stringEnd(text, i);
  if (c === "{" || c === "[") {
    let depth = 0;
    for (let j = i; ; j++) {
      const d = text[j];
      if (d === '"') j = stringEnd(text, j) - 1;
      else if (d === "{" || d === "[") depth++;
      else if (d === "}" || d === "]") {
        if (--depth === 0) return j + 1;
      }
    }
  }
  // A number, true, false or null: runs until a delimiter.
  let j = i;
  while (j < text.length && !ws.has(text[j]!) && text[j] !== "," && text[j] !== "}" && text[j] !== "]") j++;
  return j;
}
