//! Node 20 entry point: the same client, with the `ws` package as its WebSocket.

import WebSocket from "ws";
import { Client, type ClientOptions, type SocketFactory } from "./client.js";

export * from "./index.js";

/** A client over `ws` (Node has no global WebSocket before version 22). */
export function connect(opts: ClientOptions): Client {
  return new Client({ WebSocket: WebSocket as unknown as SocketFactory, storage: null, ...opts });
}
