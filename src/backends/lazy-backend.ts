import type { Backend, InferenceCall, InferenceReply } from "./backend.ts";

/**
 * A backend made on first use. The built-in models are configured on every node, but their stemmed lexicons cost
 * ~40 MB of resident memory and 0.15 s to build: a worker that only calls model servers never pays either. The
 * first call waits for the build (well inside any per-request timeout).
 */
export function lazyBackend(name: string, make: () => Promise<Backend>): Backend {
  let made: Promise<Backend> | undefined;
  const get = () => (made ??= make());
  return {
    name,
    infer: (call: InferenceCall): Promise<InferenceReply> => get().then((b) => b.infer(call)),
    ready: () => get().then((b) => b.ready()),
    close: async () => {
      if (made) await (await made).close();
    },
  };
}
