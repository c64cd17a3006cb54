//! @concord/client: the TypeScript client of Concord (browsers and Node 20).

export { Client, type Ack, type ClientEvents, type ClientOptions, type IdStorage, type SocketFactory, type SocketLike, type Status } from "./client.js";
export { Doc, type DocEvents, type ResyncReason, type SyncState } from "./doc.js";
export { Room, type EventMsg, type Member, type RoomEvents, type StreamEvents } from "./room.js";
export { ConcordError, ERROR_CODES, type ErrorCode } from "./errors.js";
export { apply, ApplyError, clone } from "./apply.js";
export { transform, transformOp, transformPair } from "./transform.js";
export { canonicalJson, sha256, stateHash } from "./hash.js";
export { decodeOps, OpDecodeError, type Json, type Op, type Path, type PathSeg } from "./ops.js";
export { backoffCap, backoffDelay, type BackoffOptions } from "./backoff.js";
