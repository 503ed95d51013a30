/**
 * The user view's state: the published templates, the caller's own instances (one per template),
 * the live progress of each, and the actions. Live by two means: a WatchInstance stream for every
 * instance the gateway is still working on (states and pod/event messages as they arrive), and a
 * light refresh of both lists every few seconds while the page is visible (templates an admin
 * publishes or deletes, and changes made elsewhere: another tab, the CLI, an admin). The caller's quota
 * usage (GetQuotaUsage) is read with the lists and again after each action.
 */
import { reactive } from "vue";
import { ApiError, api, call, newRequestId, parseName, type Instance, type InstanceEvent, type QuotaLimitUsage, type Template } from "./api/client";
import { watchInstance } from "./api/watch";
import { BUSY } from "./format";

export interface ProgressLine {
  key: number;
  state: string;
  text: string;
}

/** What a card's buttons ask for; "keepalive" answers an announced pause for idleness; "upgrade" moves the instance
 * to its engine's new version now (UpdateInstance, docs/upgrade.md). */
export type Action = "install" | "pause" | "resume" | "restart" | "uninstall" | "keepalive" | "upgrade";

export interface CardState {
  error: ApiError | null;
  acting: string; // the action in flight ("install", "pause", …) or ""
  progress: ProgressLine[];
}

const REFRESH_MS = 4000;
const MAX_LINES = 8;

function fetchLists() {
  return Promise.all([
    call(api.GET("/v1/namespaces/{namespace}/templates", { params: { path: { namespace: "-" }, query: { pageSize: 500 } } })),
    call(api.GET("/v1/namespaces/{namespace}/templates/{template}/instances",
      { params: { path: { namespace: "-", template: "-" }, query: { owner: "me", pageSize: 500 } } })),
    fetchQuota(),
  ]);
}

/** The caller's quota usage; null when it cannot be read (the engines still show without it). */
function fetchQuota(): Promise<QuotaLimitUsage[] | null> {
  return call(api.GET("/v1/quotaUsage", { params: { query: { user: "me" } } }))
    .then((usage) => usage.limits ?? [], () => null);
}

let prefetched: ReturnType<typeof fetchLists> | null = null;

/** Start loading the lists at once, beside WhoAmI, so the first cards need one round trip, not two. */
export function prefetchLists(): void {
  prefetched = fetchLists();
  prefetched.catch(() => undefined); // a signed-out visitor's 401s: WhoAmI handles those
}

export function useEngines() {
  const s = reactive({
    templates: [] as Template[],
    instances: {} as Record<string, Instance>, // by template name
    cards: {} as Record<string, CardState>, // by template name
    loaded: false,
    listError: null as ApiError | null,
    notice: null as ApiError | null, // an action's error that outlives its card (the template is gone)
    quota: [] as QuotaLimitUsage[], // the caller's usage of each quota limit
  });
  const watches = new Map<string, AbortController>(); // by instance name
  let lineKey = 0;
  let timer: number | undefined;

  function card(template: string): CardState {
    if (!s.cards[template]) s.cards[template] = { error: null, acting: "", progress: [] };
    return s.cards[template];
  }

  function newer(a: Instance | undefined, b: Instance): boolean {
    if (!a || a.name !== b.name) return true;
    return (b.updateTime ?? "") >= (a.updateTime ?? "");
  }

  function put(instance: Instance): void {
    const template = instance.template ?? "";
    if (newer(s.instances[template], instance)) s.instances[template] = instance;
    if (BUSY.has(instance.state ?? "")) watch(instance.name ?? "");
  }

  function addLine(template: string, state: string, text: string): void {
    const c = card(template);
    const last = c.progress[c.progress.length - 1];
    if (last && last.text === text && last.state === state) return;
    c.progress.push({ key: ++lineKey, state, text });
    if (c.progress.length > MAX_LINES) c.progress.splice(0, c.progress.length - MAX_LINES);
  }

  function watch(name: string): void {
    if (!name || watches.has(name)) return;
    const template = name.split("/instances/")[0];
    const controller = watchInstance(name, {
      onEvent(event: InstanceEvent) {
        const instance = event.instance;
        if (!instance) return;
        if (newer(s.instances[template], instance)) s.instances[template] = instance;
        const text = event.message || instance.stateMessage || "";
        if (BUSY.has(instance.state ?? "") || card(template).progress.length) addLine(template, instance.state ?? "", text);
        if (!BUSY.has(instance.state ?? "")) stopWatch(name); // settled: the refresh takes over
      },
      onEnd(error) {
        watches.delete(name);
        if (error && (error.code === "NOT_FOUND")) {
          if (s.instances[template]?.name === name) delete s.instances[template];
          card(template).progress = [];
        } else if (BUSY.has(s.instances[template]?.state ?? "")) {
          // The stream broke while the gateway still works (a restart, a network blip): look again a
          // little later, which watches again; never in a tight loop against a failing service.
          window.setTimeout(() => void refresh(), 2000);
        }
      },
    });
    watches.set(name, controller);
  }

  function stopWatch(name: string): void {
    watches.get(name)?.abort();
    watches.delete(name);
  }

  async function refresh(): Promise<void> {
    try {
      const pending = prefetched ?? fetchLists();
      prefetched = null;
      const [templates, mine, quota] = await pending;
      if (quota) s.quota = quota;
      s.templates = templates.templates ?? [];
      const seen = new Set<string>();
      for (const instance of mine.instances ?? []) {
        seen.add(instance.template ?? "");
        put(instance);
      }
      for (const template of Object.keys(s.instances)) {
        const instance = s.instances[template];
        if (!seen.has(template) && !watches.has(instance.name ?? "") && !card(template).acting) {
          delete s.instances[template];
          card(template).progress = [];
        }
      }
      s.listError = null;
    } catch (e) {
      s.listError = e instanceof ApiError && e.code !== "UNAUTHENTICATED" ? e : null;
    } finally {
      s.loaded = true;
    }
  }

  function path(name: string) {
    const p = parseName(name);
    return { namespace: p.namespace, template: p.template, instance: p.instance };
  }

  async function act(template: Template, action: Action): Promise<void> {
    const tname = template.name ?? "";
    const c = card(tname);
    c.error = null;
    c.acting = action;
    if (action !== "keepalive") c.progress = [];
    const requestId = newRequestId();
    try {
      const existing = s.instances[tname];
      let result: Instance | undefined;
      if (action === "install") {
        const p = parseName(tname);
        result = await call(api.POST("/v1/namespaces/{namespace}/templates/{template}/instances", {
          params: { path: { namespace: p.namespace, template: p.template } }, body: { requestId } }));
      } else if (existing?.name) {
        const params = { path: path(existing.name) };
        if (action === "uninstall") {
          await call(api.DELETE("/v1/namespaces/{namespace}/templates/{template}/instances/{instance}",
            { params: { ...params, query: { requestId } } }));
          watch(existing.name);
        } else if (action === "pause") {
          result = await call(api.POST("/v1/namespaces/{namespace}/templates/{template}/instances/{instance}:pause", { params, body: { requestId } }));
        } else if (action === "keepalive") {
          // Not an idempotent-key call: keeping alive twice is keeping alive.
          result = await call(api.POST("/v1/namespaces/{namespace}/templates/{template}/instances/{instance}:keepAlive", { params, body: {} }));
        } else if (action === "upgrade") {
          result = await call(api.POST("/v1/namespaces/{namespace}/templates/{template}/instances/{instance}:upgrade", { params, body: { requestId } }));
        } else if (action === "resume") {
          result = await call(api.POST("/v1/namespaces/{namespace}/templates/{template}/instances/{instance}:resume", { params, body: { requestId } }));
        } else {
          result = await call(api.POST("/v1/namespaces/{namespace}/templates/{template}/instances/{instance}:restart", { params, body: { requestId } }));
        }
      }
      if (result) {
        put(result);
        if (BUSY.has(result.state ?? "")) addLine(tname, result.state ?? "", result.stateMessage ?? "");
      }
    } catch (e) {
      const error = e instanceof ApiError ? e : new ApiError(0, "UNKNOWN", String(e), "", [], requestId, null);
      if (error.reason === "TEMPLATE_NOT_FOUND") {
        s.notice = error; // its card goes with the refresh: say it at the top of the page
        void refresh();
      } else {
        c.error = error;
        if (error.code === "NOT_FOUND" || error.code === "ALREADY_EXISTS") void refresh();
      }
    } finally {
      c.acting = "";
    }
    if (action === "uninstall") void refresh();
    else void fetchQuota().then((quota) => { if (quota) s.quota = quota; });
  }

  function tick(): void {
    if (document.visibilityState === "visible") void refresh();
  }

  function start(): void {
    timer = window.setInterval(tick, REFRESH_MS);
    document.addEventListener("visibilitychange", tick);
  }

  function stop(): void {
    window.clearInterval(timer);
    document.removeEventListener("visibilitychange", tick);
    for (const c of watches.values()) c.abort();
    watches.clear();
  }

  return { s, card, refresh, act, start, stop };
}
