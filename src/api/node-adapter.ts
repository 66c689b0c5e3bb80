/**
 * connect-node's connectNodeAdapter (routes, 404 for other paths, gzip and brotli accepted), except for what happens
 * when writing a response fails. connect-node passes that to console.error, stack and all, unless its code is
 * ABORTED; a client that goes away in the middle of a stream (`lote results ID | head`, a Ctrl-C, a Python client
 * leaving its `for r in client.results(...)` loop: HTTP/2 RST_STREAM CANCEL, "write ECANCELED", code INTERNAL) put
 * a 30-line stack trace between the node's JSON log lines, once per such call. Its "rpc" log line already says
 * `canceled`, so that case is dropped here; any other write failure is handed to `onWriteFailure`, for one log line.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { Http2ServerRequest, Http2ServerResponse } from "node:http2";
import {
  Code, ConnectError, createConnectRouter, type ConnectRouter, type ConnectRouterOptions, type ContextValues,
} from "@connectrpc/connect";
import {
  compressionBrotli, compressionGzip, universalRequestFromNodeRequest, universalResponseToNodeResponse,
} from "@connectrpc/connect-node";

type NodeServerRequest = IncomingMessage | Http2ServerRequest;
type NodeServerResponse = ServerResponse | Http2ServerResponse;

export interface NodeAdapterOptions extends ConnectRouterOptions {
  routes(router: ConnectRouter): void;
  /** Values every handler's context gets for this request. */
  contextValues?(req: NodeServerRequest): ContextValues;
  /** A response that could not be written although its client was still there (procedure: `service/method`). */
  onWriteFailure(procedure: string, err: ConnectError): void;
  /** A response whose writing stopped because its client went away. */
  onClientGone?(procedure: string): void;
}

export function nodeAdapter(options: NodeAdapterOptions): (req: NodeServerRequest, res: NodeServerResponse) => void {
  const { routes, contextValues, onWriteFailure, onClientGone, ...routerOptions } = options;
  const router = createConnectRouter({ ...routerOptions, acceptCompression: routerOptions.acceptCompression ?? [compressionGzip, compressionBrotli] });
  routes(router);
  const handlers = new Map(router.handlers.map((h) => [h.requestPath, h]));
  return (req, res) => {
    const handler = handlers.get((req.url ?? "").split("?", 2)[0]!);
    if (!handler) {
      res.statusCode = 404;
      res.end();
      return;
    }
    handler(universalRequestFromNodeRequest(req, res, undefined, contextValues?.(req)))
      .then((uRes) => universalResponseToNodeResponse(uRes, res))
      .catch((reason: unknown) => {
        const err = ConnectError.from(reason);
        const procedure = `${handler.service.typeName}/${handler.method.name}`;
        // ABORTED is connect-node's own exemption (a connection reset); a response that never ended lost its client.
        if (err.code === Code.Aborted || !res.writableEnded) onClientGone?.(procedure);
        else onWriteFailure(procedure, err);
      });
  };
}
