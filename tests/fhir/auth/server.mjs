// An oidc-provider authorization server for SMART Backend Services tests.
//   node server.mjs CONFIG.json
// CONFIG: {"issuer", "port", "resource" (the FHIR base, the tokens' audience),
//          "clients": [{"client_id", "jwks": {"keys": [...]}, "alg": "RS384"|"ES384"}]}
// Clients authenticate with private_key_jwt only and get JWT access tokens through
// the client_credentials grant, audience = the FHIR base (resource indicators).
import { readFileSync } from 'node:fs';
import { generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const SCOPES = ['system/*.read', 'system/*.rs', 'system/Patient.read', 'system/Observation.read'];

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: 'as-1', use: 'sig', alg: 'RS256' };

const provider = new Provider(config.issuer, {
  clients: config.clients.map((c) => ({
    client_id: c.client_id,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: c.alg,
    jwks: c.jwks,
    scope: SCOPES.join(' '),
  })),
  jwks: { keys: [signingKey] },
  scopes: SCOPES,
  enabledJWA: { clientAuthSigningAlgValues: ['RS384', 'ES384'] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => config.resource,
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resourceIndicator) => {
        if (resourceIndicator !== config.resource) {
          throw new Error(`unknown resource ${resourceIndicator}`);
        }
        return {
          scope: SCOPES.join(' '),
          audience: config.resource,
          accessTokenTTL: config.token_ttl || 300,
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  // loopback jwks_uri would trip oidc-provider's SSRF guard; clients here carry
  // their JWKS inline, so no fetch happens at all
});
provider.proxy = false;
provider.listen(config.port, '127.0.0.1');
console.log(`oidc-provider listening on ${config.issuer}`);
