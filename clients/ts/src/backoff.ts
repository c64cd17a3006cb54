//! Reconnect backoff with full jitter: the delay after `n` failures is uniform in
//! `[0, min(max, initial · 2ⁿ)]`, as the Rust client.

export interface BackoffOptions {
  /** First cap, in ms (default 100). */
  initialMs?: number;
  /** Largest cap, in ms (default 5000). */
  maxMs?: number;
}

export function backoffCap(attempt: number, o: BackoffOptions = {}): number {
  const initial = Math.max(1, o.initialMs ?? 100);
  const max = Math.max(initial, o.maxMs ?? 5000);
  return Math.min(max, initial * 2 ** Math.min(attempt, 30));
}

export function backoffDelay(attempt: number, o: BackoffOptions = {}, random = Math.random): number {
  return Math.floor(random() * (backoffCap(attempt, o) + 1));
}
