/** Reading a lote node's Prometheus metrics (`metrics.port`) in tests and benchmarks. */

/** The node's exposition text from `GET /metrics` on `port`. */
export async function scrapeMetrics(port: number): Promise<string> {
  return (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
}

/** The value of one sample line, e.g. `lote_calls_total{model="m",outcome="succeeded"}`; undefined when absent. */
export function sample(text: string, series: string): number | undefined {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

/** One sample from a fresh scrape of the node on `port`. */
export async function metricOf(port: number, series: string): Promise<number | undefined> {
  return sample(await scrapeMetrics(port), series);
}
