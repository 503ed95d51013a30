/** Words for what the API returns: accelerators, disks, states, errors, times. */
import type { ApiError, Instance, InstanceState, QuotaLimitUsage, Schemas } from "./api/client";
import { has, locale, t, type MessageKey } from "./i18n";

export function accelerator(acc: Schemas["Accelerator"] | undefined): string {
  if (!acc) return t("acc.unknown");
  const parts: string[] = [];
  if (acc.type === "GPU") parts.push(t("acc.gpu", { n: acc.gpuCount ?? 1 }));
  else if (acc.type === "SHARED_GPU") parts.push(t("acc.sharedGpu", { n: acc.gpuMemoryGib ?? 0 }));
  else if (acc.type === "CPU") parts.push(t("acc.cpu"));
  if (acc.eci) parts.push(acc.eciInstanceType ? `${t("acc.eci")} (${acc.eciInstanceType})` : t("acc.eci"));
  return parts.length ? parts.join(" · ") : t("acc.unknown");
}

export function disks(list: Schemas["Disk"][] | undefined): string {
  const sizes = (list ?? []).map((d) => d.size).filter(Boolean);
  return sizes.length ? sizes.join(" + ") : "—";
}

export function stateText(state: InstanceState | "NONE"): string {
  return t(`state.${state}` as MessageKey);
}

/** States in which the gateway is still working: a watch shows their progress. */
export const BUSY: ReadonlySet<string> = new Set(["INSTALLING", "STARTING", "PAUSING", "RESUMING", "RESTARTING", "UNINSTALLING"]);

export function isBusy(instance: Instance | undefined): boolean {
  return !!instance && BUSY.has(instance.state ?? "");
}

// Reasons (google.rpc.ErrorInfo) that have words of their own; the rest fall back to the code.
const REASONS: Record<string, MessageKey> = {
  INSTANCE_EXISTS: "error.ALREADY_INSTALLED",
  ALREADY_EXISTS: "error.ALREADY_INSTALLED",
  NOT_OWNER: "error.NOT_OWNER",
  INSTANCE_NOT_FOUND: "error.NOT_FOUND",
  TEMPLATE_NOT_FOUND: "error.TEMPLATE_NOT_FOUND",
  TEMPLATE_DELETING: "error.TEMPLATE_DELETING",
  DELETE_IN_PROGRESS: "error.TEMPLATE_DELETING",
  ADMIN_REQUIRED: "error.ADMIN_REQUIRED",
  STALE_ETAG: "error.STALE_ETAG",
  REQUEST_IN_PROGRESS: "error.REQUEST_IN_PROGRESS",
  NETWORK: "error.NETWORK",
  KUBERNETES_UNAVAILABLE: "error.UNAVAILABLE",
};

/** A quota limit's name in words ("running" -> "running instances"); `short` for the usage line. */
function limitName(limit: string, short: boolean): string {
  const key = `quota.${short ? "short" : "limit"}.${limit}`;
  return has(key) ? t(key) : limit;
}

/** The caller's usage of each limit that is set, e.g. "Running 1 of 2 · GPUs 1 of 1"; "" when none is set. */
export function quotaLine(limits: QuotaLimitUsage[]): string {
  return limits.filter((l) => !l.unlimited)
    .map((l) => t("quota.usage", { limit: limitName(l.limit ?? "", true), usage: l.usage ?? 0, maximum: l.maximum ?? 0 }))
    .join(" · ");
}

export function errorWords(error: ApiError): string {
  if (error.reason === "QUOTA_EXCEEDED") {
    const m = error.metadata;
    const words = t("error.QUOTA_EXCEEDED", { limit: limitName(m.limit ?? "", false), usage: m.usage ?? "?", maximum: m.maximum ?? "?" });
    const hint = `quota.hint.${m.limit}`; // what frees the limit: pausing frees running ones, not installed ones
    return has(hint) ? words + (locale.value === "zh-CN" ? "" : " ") + t(hint) : words;
  }
  const byReason = REASONS[error.reason];
  if (byReason) return t(byReason);
  const byCode = `error.${error.code}`;
  return has(byCode) ? t(byCode) : t("error.UNKNOWN");
}

export function when(iso: string | undefined): string {
  if (!iso) return t("card.never");
  const then = new Date(iso);
  if (Number.isNaN(then.getTime()) || then.getTime() <= 0) return t("card.never");
  const seconds = Math.round((then.getTime() - Date.now()) / 1000);
  const rtf = new Intl.RelativeTimeFormat(locale.value, { numeric: "auto" });
  const abs = Math.abs(seconds);
  if (abs < 60) return rtf.format(seconds, "second");
  if (abs < 3600) return rtf.format(Math.round(seconds / 60), "minute");
  if (abs < 86400) return rtf.format(Math.round(seconds / 3600), "hour");
  return rtf.format(Math.round(seconds / 86400), "day");
}
