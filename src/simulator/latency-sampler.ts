import type { LatencyDistribution } from "./simulator-options.ts";

/**
 * mulberry32: a 32-bit seedable PRNG, plenty for fault injection and latency draws, and about 10x cheaper than
 * crypto randomness. The same seed gives the same sequence, so a test can pin the faults it sees.
 */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** z of the 99th percentile of the standard normal distribution. */
const Z99 = 2.3263478740408408;

/** Returns a function drawing one latency in ms from `dist`. */
export function latencySampler(dist: LatencyDistribution, random: () => number): () => number {
  switch (dist.kind) {
    case "fixed": {
      const ms = dist.ms;
      return () => ms;
    }
    case "uniform": {
      const { minMs, maxMs } = dist;
      return () => minMs + (maxMs - minMs) * random();
    }
    case "lognormal": {
      // ln(latency) ~ N(mu, sigma): the median is e^mu and the p99 is e^(mu + Z99 * sigma).
      const mu = Math.log(dist.p50Ms);
      const sigma = (Math.log(dist.p99Ms) - mu) / Z99;
      return () => {
        // Box-Muller; 1 - u keeps the logarithm's argument in (0, 1].
        const z = Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
        return Math.exp(mu + sigma * z);
      };
    }
  }
}
