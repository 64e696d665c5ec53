// Transport security for the gRPC runtime: TLS or mutual TLS from PEM files,
// and a bearer token that every RPC must carry. With no files the channel is
// plain text, meant for loopback.
#ifndef REPTILE_TRANSPORT_GRPC_SECURITY_H_
#define REPTILE_TRANSPORT_GRPC_SECURITY_H_

#include <memory>
#include <string>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"

namespace reptile {

// PEM file paths, all optional.
//   coordinator: cert + key serve TLS; ca additionally requires client
//                certificates signed by it (mTLS).
//   worker:      ca is the authority trusted for the coordinator's
//                certificate; cert + key are its client certificate for mTLS.
struct TlsFiles {
  std::string cert, key, ca;
  bool enabled() const { return !cert.empty() || !key.empty() || !ca.empty(); }
};

struct SecurityOptions {
  TlsFiles tls;
  std::string token;  // empty: no token required or sent
  // Worker only: the name to check the coordinator's certificate against,
  // when it differs from the host in the address.
  std::string server_name;
};

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const TlsFiles& tls);
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(const TlsFiles& tls);

// The token from `token_file` if given, else from $REPTILE_TOKEN, else "".
// One trailing newline is dropped. Refuses, with one line naming the file or
// variable (never the token): a token file that group or others may read or
// write (FailedPrecondition, with the chmod that fixes it); an empty token,
// one with spaces or control characters, or one shorter than 16 characters
// (InvalidArgument).
absl::StatusOr<std::string> LoadToken(const std::string& token_file);

// Adds "authorization: Bearer <token>" to `context` (nothing for "").
void AttachToken(const std::string& token, grpc::ClientContext* context);

// OK if `token` is empty or the call carries it; UNAUTHENTICATED otherwise.
// Compares in constant time.
grpc::Status CheckToken(const std::string& token, const grpc::ServerContextBase& context);

// A channel to `address` with keepalive and quick reconnects.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& address,
                                                           const SecurityOptions& security);

}  // namespace reptile

#endif  // REPTILE_TRANSPORT_GRPC_SECURITY_H_
