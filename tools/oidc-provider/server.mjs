// A development and test OpenID Provider: `oidc-provider` (the engine inside Logto), mounted at /oidc
// like Logto, so the gateway talks to it exactly as to Logto: issuer <base>/oidc, discovery, /oidc/auth,
// /oidc/token, /oidc/me, /oidc/session/end, /oidc/jwks; scopes `roles` and `custom_data`.
//
//   node server.mjs --config provider.json
//
// provider.json: {"host": "127.0.0.1", "port": 0, "publicHost": "",
//                 "clients": [{client_id, client_secret, redirect_uris, post_logout_redirect_uris}],
//                 "accounts": {"alice": {"email": "...", "name": "...", "roles": ["admin"], "custom_data": {}}}}
// Prints one JSON line {"issuer", "port"} on stdout once listening.
//
// Sign-in is a development login page at /interaction/<uid>: a user name (no password — this is not
// an identity store) and, for accounts not in the file, optional roles. Tests sign in without a
// browser by posting the same form: POST /interaction/<uid>/login with `username` (and `roles`).
// Consent is implied for the configured (first-party) clients, as Logto does for its own apps.
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const { values: args } = parseArgs({ options: { config: { type: 'string' } } });
const config = args.config ? JSON.parse(readFileSync(args.config, 'utf8')) : {};
const host = config.host || '127.0.0.1';
const accounts = new Map(Object.entries(config.accounts || {}));

function signingKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: randomBytes(8).toString('hex'), use: 'sig', alg: 'RS256' };
}

function account(id) {
  const known = accounts.get(id) || {};
  return {
    accountId: id,
    async claims() {
      return {
        sub: id,
        email: known.email || `${id}@example.test`,
        email_verified: true,
        name: known.name || id,
        username: known.username || id,
        roles: known.roles || [],
        custom_data: known.custom_data || {},
      };
    },
  };
}

const escape = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function loginPage(uid, details) {
  const client = escape(details.params.client_id || '');
  return `<!doctype html><html><head><meta charset="utf-8"><title>Sign in</title></head><body>
<h1>Sign in</h1><p>Development sign-in for <code>${client}</code>: any user name works.</p>
<form method="post" action="/interaction/${escape(uid)}/login">
<label>User name <input name="username" autofocus required></label>
<label>Roles (comma separated) <input name="roles"></label>
<button type="submit">Sign in</button></form></body></html>`;
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 16384) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

const server = http.createServer();
server.listen(config.port || 0, host, () => {
  const { port } = server.address();
  const base = config.publicBase || `http://${host}:${port}`;
  const issuer = `${base}/oidc`;
  const provider = new Provider(issuer, {
    clients: config.clients || [],
    jwks: { keys: [signingKey()] },
    cookies: { keys: [randomBytes(32).toString('hex')] },
    findAccount: (ctx, id) => account(id),
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'username'],
      roles: ['roles'],
      custom_data: ['custom_data'],
    },
    scopes: ['openid', 'offline_access', 'profile', 'email', 'roles', 'custom_data'],
    features: { devInteractions: { enabled: false }, rpInitiatedLogout: { enabled: true } },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    pkce: { required: () => true },
    async loadExistingGrant(ctx) {
      // First-party clients: grant what they ask for without a consent screen.
      const grantId = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
      if (grantId) {
        const found = await ctx.oidc.provider.Grant.find(grantId);
        if (found) return found;
      }
      const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
      grant.addOIDCScope(ctx.oidc.params.scope || 'openid');
      await grant.save();
      return grant;
    },
  });
  if (base.startsWith('http:')) provider.proxy = false;
  const callback = provider.callback();

  server.on('request', async (req, res) => {
    try {
      const url = new URL(req.url, base);
      if (url.pathname === '/oidc' || url.pathname.startsWith('/oidc/')) {
        // Mounted like express's app.use('/oidc', ...): the provider sees its own paths.
        req.originalUrl = req.url;
        req.url = req.url.slice('/oidc'.length) || '/';
        return callback(req, res);
      }
      const match = url.pathname.match(/^\/interaction\/([\w-]+)(\/login)?$/);
      if (match && req.method === 'GET' && !match[2]) {
        const details = await provider.interactionDetails(req, res);
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
        return res.end(loginPage(details.uid, details));
      }
      if (match && req.method === 'POST' && match[2]) {
        await provider.interactionDetails(req, res);
        const form = await readForm(req);
        const username = (form.get('username') || '').trim();
        if (!/^[\w.@-]{1,64}$/.test(username)) {
          res.writeHead(400, { 'content-type': 'text/plain' });
          return res.end('a user name of letters, digits, . _ @ - is required\n');
        }
        if (!accounts.has(username)) {
          const roles = (form.get('roles') || '').split(',').map((r) => r.trim()).filter(Boolean);
          accounts.set(username, { roles });
        }
        return provider.interactionFinished(req, res, { login: { accountId: username } }, { mergeWithLastSubmission: false });
      }
      if (url.pathname === '/healthz') {
        res.writeHead(200);
        return res.end('ok\n');
      }
      res.writeHead(404, { 'content-type': 'text/plain' });
      return res.end('not found\n');
    } catch (err) {
      res.writeHead(400, { 'content-type': 'text/plain' });
      return res.end(`${err.name || 'Error'}: ${err.message}\n`);
    }
  });
  process.stdout.write(`${JSON.stringify({ issuer, port })}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => server.close(() => process.exit(0)));
