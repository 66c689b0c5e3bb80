/**
 * Parses a Retry-After header (RFC 9110 §10.2.3): delay-seconds (digits only) or an HTTP-date (§5.6.7). Returns
 * milliseconds from `now`, never negative, or undefined when absent or anything else. Date.parse is not used: it
 * reads "-5" and "+5" as dates in the year -5 and 5, which made a server's garbage mean "retry at once"; "1.5" is
 * not delay-seconds either, and falls back to the dispatcher's backoff like any unreadable value.
 */
export function parseRetryAfter(value: string | string[] | undefined, now: number = Date.now()): number | undefined {
  const text = Array.isArray(value) ? value[0] : value;
  if (text === undefined) return undefined;
  const trimmed = text.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
  const at = parseHttpDate(trimmed, now);
  return at === undefined ? undefined : Math.max(0, at - now);
}

const months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
const month = `(${months.join("|")})`;
const time = "(\\d{2}):(\\d{2}):(\\d{2})";
/** "Sun, 06 Nov 1994 08:49:37 GMT", the form senders MUST use. */
const imfFixdate = new RegExp(`^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (\\d{2}) ${month} (\\d{4}) ${time} GMT$`);
/** "Sunday, 06-Nov-94 08:49:37 GMT" (obsolete RFC 850). */
const rfc850Date = new RegExp(`^(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), (\\d{2})-${month}-(\\d{2}) ${time} GMT$`);
/** "Sun Nov  6 08:49:37 1994" (obsolete ANSI C asctime()). */
const asctimeDate = new RegExp(`^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) ${month} (\\d{2}| \\d) ${time} (\\d{4})$`);

/** An HTTP-date in ms since the epoch, or undefined. Field values are checked, not rolled over (31 Feb is refused). */
function parseHttpDate(text: string, now: number): number | undefined {
  let fields: [day: string, month: string, year: number, hh: string, mm: string, ss: string];
  let m: RegExpExecArray | null;
  if ((m = imfFixdate.exec(text))) {
    fields = [m[1]!, m[2]!, Number(m[3]), m[4]!, m[5]!, m[6]!];
  } else if ((m = rfc850Date.exec(text))) {
    // §5.6.7: a two-digit year more than 50 years in the future is the most recent past year with those digits.
    const thisYear = new Date(now).getUTCFullYear();
    let year = Math.floor(thisYear / 100) * 100 + Number(m[3]);
    if (year > thisYear + 50) year -= 100;
    fields = [m[1]!, m[2]!, year, m[4]!, m[5]!, m[6]!];
  } else if ((m = asctimeDate.exec(text))) {
    fields = [m[2]!, m[1]!, Number(m[6]), m[3]!, m[4]!, m[5]!];
  } else {
    return undefined;
  }
  const [day, mon, year, h, mi, s] = [Number(fields[0]), months.indexOf(fields[1]), fields[2], Number(fields[3]), Number(fields[4]), Number(fields[5])];
  if (h > 23 || mi > 59 || s > 59) return undefined;
  const at = Date.UTC(year, mon, day, h, mi, s);
  const check = new Date(at);
  return check.getUTCDate() === day && check.getUTCMonth() === mon ? at : undefined;
}
