#!/usr/bin/env bash
# Make a throwaway CA and certificates for rstar's gRPC services over mutual TLS.
#
#   deploy/tls/make-test-ca.sh [OUT_DIR]        (default: deploy/tls/certs)
#
# Writes, in OUT_DIR:
#   ca.pem, ca-key.pem          the CA (keep ca-key.pem away from every service)
#   server.pem, server-key.pem  for policy, reward and executor: valid for localhost,
#                               127.0.0.1, ::1, policy, reward, executor and the names in
#                               RSTAR_TLS_EXTRA_SANS (e.g. "DNS:executor.rstar.svc,IP:10.0.0.5");
#                               usable as a client certificate too, so that the
#                               healthcheck inside a server's container can present it
#   client.pem, client-key.pem  for the workers and the CLI (client authentication only)
# Then set, per process: RSTAR_TLS_CERT, RSTAR_TLS_KEY (its pair) and RSTAR_TLS_CA=ca.pem.
#
# For tests and trials only: the keys are unencrypted, the certificates last DAYS days
# (default 365), and nothing revokes them. Use your organisation's CA in production.
set -euo pipefail

out="${1:-$(dirname "$0")/certs}"
days="${DAYS:-365}"
sans="DNS:localhost,IP:127.0.0.1,IP:::1,DNS:policy,DNS:reward,DNS:executor"
if [[ -n "${RSTAR_TLS_EXTRA_SANS:-}" ]]; then
    sans="$sans,$RSTAR_TLS_EXTRA_SANS"
fi

mkdir -p "$out"
cd "$out"
printf '*\n' > .gitignore  # keys in the repository tree must never be committed
umask 077  # the keys
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days "$days" \
    -keyout ca-key.pem -out ca.pem -subj "/CN=rstar test CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

issue() {  # issue NAME CN EXTENSIONS
    openssl req -newkey rsa:2048 -nodes -sha256 -keyout "$1-key.pem" -out "$tmp/$1.csr" \
        -subj "/CN=$2" 2>/dev/null
    printf '%s\n' "$3" > "$tmp/$1.ext"
    openssl x509 -req -in "$tmp/$1.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
        -CAserial "$tmp/ca.srl" -days "$days" -sha256 -extfile "$tmp/$1.ext" \
        -out "$1.pem" 2>/dev/null
}

issue server "rstar services" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$sans"
issue client "rstar worker" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"

chmod 644 ca.pem server.pem client.pem
openssl verify -CAfile ca.pem server.pem client.pem >/dev/null
echo "wrote $(pwd)/{ca,server,client}.pem and their -key.pem files (server names: $sans)"
