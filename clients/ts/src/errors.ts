//! Typed errors: the protocol's error codes (§15.2) and the client's own failures.

/** Every error code of protocol v1. */
export const ERROR_CODES = [
  "bad_request", "unauthorized", "forbidden", "not_found", "kind_mismatch", "too_large",
  "rate_limited", "invalid_op", "rejected", "conflict", "unavailable", "internal",
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

/** An `error` frame of the server, or the client's own failure (`code` `closed`, `left`). */
export class ConcordError extends Error {
  constructor(
    readonly code: ErrorCode | "closed" | "left",
    message: string,
    readonly room?: string,
    readonly id?: string,
    readonly retryAfterMs?: number,
  ) {
    super(`${code}: ${message}`);
    this.name = "ConcordError";
  }

  /** Whether sending the same thing again later can succeed (`unavailable`, `rate_limited`). */
  get retryable(): boolean {
    return this.code === "unavailable" || this.code === "rate_limited";
  }
}

/** The `error` frame as received. */
export interface ErrorMsg {
  type: "error";
  code: ErrorCode;
  message: string;
  room?: string;
  id?: string;
  retry_after_ms?: number;
}

export const fromFrame = (m: ErrorMsg) => new ConcordError(m.code, m.message, m.room, m.id, m.retry_after_ms);
