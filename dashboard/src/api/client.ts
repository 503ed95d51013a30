/**
 * The typed REST client: openapi-fetch over the types generated from the committed OpenAPI
 * document (src/api/schema.d.ts, `npm run gen`). Same origin, so the browser sends the session
 * cookie and the bridge's cross-site guard sees its own host in Origin.
 *
 * Every call carries a fresh X-Request-Id (the bridge keeps a well-formed client id), so an error
 * can name the id support looks up in the logs and the audit log, even when no response came back.
 */
import createClient, { type Middleware } from "openapi-fetch";
import type { components, paths } from "./schema";

export type Schemas = components["schemas"];
export type Template = Schemas["Template"];
export type Instance = Schemas["Instance"];
export type InstanceEvent = Schemas["InstanceEvent"];
export type InstanceState = NonNullable<Instance["state"]>;
export type Principal = Schemas["Principal"];
export type AuditEvent = Schemas["AuditEvent"];
export type QuotaLimitUsage = Schemas["QuotaLimitUsage"];

export interface Violation {
  field: string;
  description: string;
}

/** A failed call in the terms of google.rpc.Status and its details. */
export class ApiError extends Error {
  constructor(
    readonly httpStatus: number,
    readonly code: string,
    message: string,
    readonly reason: string,
    readonly violations: Violation[],
    readonly requestId: string,
    readonly retryAfter: number | null,
    readonly metadata: Record<string, string> = {}, // google.rpc.ErrorInfo metadata (a quota's limit, usage, maximum)
  ) {
    super(message);
  }
}

// google.rpc.Code names, by number (the bridge writes `code` as a number).
const CODES = ["OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
  "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
  "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"];

interface AnyDetail {
  "@type"?: string;
  reason?: string;
  metadata?: Record<string, string>;
  fieldViolations?: { field?: string; description?: string }[];
  retryDelay?: string;
}

export function newRequestId(): string {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** An ApiError from a google.rpc.Status body (or from what came instead of one). */
export function toApiError(httpStatus: number, body: unknown, requestId: string, retryAfter: string | null): ApiError {
  const status = (body && typeof body === "object" ? body : {}) as { code?: number; message?: string; details?: AnyDetail[] };
  const code = typeof status.code === "number" ? (CODES[status.code] ?? "UNKNOWN") : httpStatus >= 500 ? "UNAVAILABLE" : "UNKNOWN";
  let reason = "";
  let metadata: Record<string, string> = {};
  const violations: Violation[] = [];
  let retry: number | null = retryAfter ? Number(retryAfter) : null;
  for (const d of status.details ?? []) {
    const type = d["@type"] ?? "";
    if (type.endsWith("google.rpc.ErrorInfo") && d.reason) {
      reason = d.reason;
      metadata = d.metadata ?? {};
    }
    if (type.endsWith("google.rpc.BadRequest") || type.endsWith("google.rpc.PreconditionFailure")) {
      for (const v of d.fieldViolations ?? []) violations.push({ field: v.field ?? "", description: v.description ?? "" });
    }
    if (type.endsWith("google.rpc.RetryInfo") && d.retryDelay && retry === null) retry = Math.ceil(parseFloat(d.retryDelay));
  }
  return new ApiError(httpStatus, code, status.message ?? `HTTP ${httpStatus}`, reason, violations, requestId, retry, metadata);
}

const requestIds: Middleware = {
  onRequest({ request }) {
    if (!request.headers.get("X-Request-Id")) request.headers.set("X-Request-Id", newRequestId());
    return request;
  },
};

/** Dispatched on window when a call finds no valid session. */
export const SIGNED_OUT = "aigc:signed-out";

export const api = createClient<paths>({ baseUrl: "", credentials: "same-origin" });
api.use(requestIds);

/** The data of an openapi-fetch result, or throw its ApiError. */
export async function call<T>(
  promise: Promise<{ data?: T; error?: unknown; response: Response }>,
): Promise<T> {
  let result: { data?: T; error?: unknown; response: Response };
  try {
    result = await promise;
  } catch {
    throw new ApiError(0, "UNAVAILABLE", "network error", "NETWORK", [], "", null);
  }
  const { data, error, response } = result;
  const requestId = response.headers.get("X-Request-Id") ?? "";
  if (error !== undefined || !response.ok) {
    const failure = toApiError(response.status, error, requestId, response.headers.get("Retry-After"));
    // The session ended (expired, or signed out in another tab): the shell sends the user to sign in.
    if (failure.code === "UNAUTHENTICATED") window.dispatchEvent(new CustomEvent(SIGNED_OUT));
    throw failure;
  }
  return data as T;
}

/** `namespaces/ns/templates/t` -> { namespace, template }; instances add `instance`. */
export function parseName(name: string): { namespace: string; template: string; instance: string } {
  const parts = name.split("/");
  return { namespace: parts[1] ?? "", template: parts[3] ?? "", instance: parts[5] ?? "" };
}
