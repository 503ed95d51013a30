/**
 * WatchInstance over the REST bridge: newline-delimited JSON, one {"result": InstanceEvent} per
 * line (the current state first), or a last {"error": Status}. fetch + a stream reader, so the
 * session cookie goes with it and the stream ends when the caller aborts.
 */
import { ApiError, newRequestId, parseName, toApiError, type InstanceEvent } from "./client";

export interface WatchHandlers {
  onEvent(event: InstanceEvent): void;
  onEnd(error: ApiError | null): void;
}

export function watchInstance(name: string, handlers: WatchHandlers): AbortController {
  const abort = new AbortController();
  const { namespace, template, instance } = parseName(name);
  const url = `/v1/namespaces/${encodeURIComponent(namespace)}/templates/${encodeURIComponent(template)}` +
    `/instances/${encodeURIComponent(instance)}:watch`;
  const requestId = newRequestId();
  void (async () => {
    let failure: ApiError | null = null;
    try {
      const response = await fetch(url, { credentials: "same-origin", signal: abort.signal,
        headers: { Accept: "application/x-ndjson", "X-Request-Id": requestId } });
      if (!response.body) throw new Error("no body");
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffered = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffered += value;
        let newline: number;
        while ((newline = buffered.indexOf("\n")) >= 0) {
          const line = buffered.slice(0, newline).trim();
          buffered = buffered.slice(newline + 1);
          if (!line) continue;
          const message = JSON.parse(line) as { result?: InstanceEvent; error?: unknown };
          if (message.result) handlers.onEvent(message.result);
          if (message.error) failure = toApiError(response.status, message.error, requestId, null);
        }
      }
    } catch (e) {
      if (abort.signal.aborted) return;
      failure = new ApiError(0, "UNAVAILABLE", String(e), "NETWORK", [], requestId, null);
    }
    if (!abort.signal.aborted) handlers.onEnd(failure);
  })();
  return abort;
}
