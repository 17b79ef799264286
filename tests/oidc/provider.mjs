// A real OpenID Connect provider for deskhub's login tests: panva's certified
// oidc-provider, with a minimal login page that checks passwords from the config file.
//
//   node provider.mjs CONFIG.json
//
// CONFIG.json (written by tests/oidcprovider.py; re-read at every login and every
// userinfo request, so a test can change an account's claims while the provider runs):
//   {
//     "port": 40123,
//     "client": {"client_id": "deskhub", "client_secret": "...", "redirect_uri": "http://.../hub/oauth_callback"},
//     "claims": {"profile": ["preferred_username", "name"], "groups": ["groups"], ...},
//     "access_token_ttl": 3600,   (seconds; short to make the hub use its refresh token)
//     "accounts": [{"username": "alice", "password": "...", "claims": {"sub": "alice", ...}}]
//   }
// The issuer is http://127.0.0.1:PORT. The client is first-party: no consent page.
import { readFileSync } from 'node:fs';
import http from 'node:http';
import Provider from 'oidc-provider';

const configPath = process.argv[2];
if (!configPath) {
  console.error('usage: node provider.mjs CONFIG.json');
  process.exit(2);
}
const readConfig = () => JSON.parse(readFileSync(configPath, 'utf8'));
const initial = readConfig();
const issuer = `http://127.0.0.1:${initial.port}`;

const DEFAULT_CLAIMS = {
  openid: ['sub'],
  profile: ['preferred_username', 'name'],
  groups: ['groups'],
  experiments: ['experiments'],
  posix: ['uid_number', 'gid_number'],
  status: ['disabled'],
};

const accountBy = (field, value) => readConfig().accounts.find(
  (account) => (field === 'sub' ? (account.claims.sub ?? account.username) : account.username) === value,
);

const escape = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

const loginPage = (uid, error = '') => `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Sign in</title></head>
<body>
<h1>Sign in to the test provider</h1>
${error ? `<p class="error">${escape(error)}</p>` : ''}
<form method="post" action="/interaction/${escape(uid)}/login" autocomplete="off">
  <input name="login" placeholder="username" autofocus>
  <input name="password" type="password" placeholder="password">
  <button type="submit">Sign in</button>
</form>
</body></html>`;

const { client } = initial;
const provider = new Provider(issuer, {
  clients: [{
    client_id: client.client_id,
    client_secret: client.client_secret,
    redirect_uris: [client.redirect_uri],
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_post',
  }],
  claims: initial.claims ?? DEFAULT_CLAIMS,
  scopes: ['openid', 'offline_access', ...Object.keys(initial.claims ?? DEFAULT_CLAIMS)],
  cookies: { keys: [`test-${process.pid}-${Date.now()}`] },
  features: { devInteractions: { enabled: false } },
  ttl: {
    AccessToken: initial.access_token_ttl ?? 3600,
    Interaction: 600,
    Grant: 86400,
    Session: 86400,
    IdToken: 3600,
    RefreshToken: 86400,
  },
  clockTolerance: 0, // one clock: a token is expired the second its ttl ends
  // the client gets a refresh token with every code (no offline_access needed), so the
  // hub can renew an expired access token at its next refresh
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  async findAccount(ctx, sub) {
    const account = accountBy('sub', sub);
    if (!account) return undefined;
    return {
      accountId: sub,
      // read when a token or the userinfo answer is made: the file's current claims
      async claims() {
        const current = accountBy('sub', sub) ?? account;
        return { preferred_username: current.username, ...current.claims, sub };
      },
    };
  },
  // the one client is first-party: grant what it asks for without a consent page
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope(ctx.oidc.params.scope ?? 'openid');
    await grant.save();
    return grant;
  },
});

const readBody = (req) => new Promise((resolve, reject) => {
  let data = '';
  req.setEncoding('utf8');
  req.on('data', (chunk) => { data += chunk; });
  req.on('end', () => resolve(new URLSearchParams(data)));
  req.on('error', reject);
});

const send = (res, status, html) => {
  res.writeHead(status, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
  res.end(html);
};

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return send(res, 400, 'interaction mismatch');
  if (details.prompt.name !== 'login') {
    // consent is never asked (loadExistingGrant grants); finish with what was asked
    return provider.interactionFinished(req, res, {}, { mergeWithLastSubmission: true });
  }
  if (req.method === 'GET' && !action) return send(res, 200, loginPage(uid));
  if (req.method === 'POST' && action === 'login') {
    const form = await readBody(req);
    const account = accountBy('username', form.get('login') ?? '');
    if (!account || account.password !== form.get('password')) {
      console.log(`login refused for ${JSON.stringify(form.get('login'))}`);
      return send(res, 200, loginPage(uid, 'Invalid username or password.'));
    }
    const accountId = account.claims.sub ?? account.username;
    return provider.interactionFinished(req, res, { login: { accountId } }, { mergeWithLastSubmission: false });
  }
  return send(res, 405, 'method not allowed');
}

const callback = provider.callback();
const server = http.createServer((req, res) => {
  const match = /^\/interaction\/([^/?]+)(?:\/(login))?(?:\?.*)?$/.exec(req.url);
  if (!match) return callback(req, res);
  interaction(req, res, match[1], match[2]).catch((err) => {
    console.error(err);
    send(res, 500, escape(err.message));
  });
  return undefined;
});
server.listen(initial.port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer}`);
});
const stop = () => server.close(() => process.exit(0));
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
