#include "transport/grpc/security.h"

#include <cstdlib>
#include <fstream>
#include <sstream>

#include <openssl/crypto.h>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/strings/ascii.h"
#include "core/status_macros.h"

namespace reptile {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", what, " file ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string text = buffer.str();
  if (!absl::StrContains(text, "-----BEGIN "))
    return absl::InvalidArgumentError(absl::StrCat(what, " file ", path, " is not PEM"));
  return text;
}

}  // namespace

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const TlsFiles& tls) {
  if (!tls.enabled()) return grpc::InsecureServerCredentials();
  if (tls.cert.empty() || tls.key.empty())
    return absl::InvalidArgumentError("TLS needs both --tls_cert and --tls_key on the coordinator");
  grpc::SslServerCredentialsOptions options(tls.ca.empty()
                                                ? GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE
                                                : GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
  ASSIGN_OR_RETURN(pair.private_key, ReadPem(tls.key, "--tls_key"));
  ASSIGN_OR_RETURN(pair.cert_chain, ReadPem(tls.cert, "--tls_cert"));
  options.pem_key_cert_pairs.push_back(pair);
  if (!tls.ca.empty()) {
    ASSIGN_OR_RETURN(options.pem_root_certs, ReadPem(tls.ca, "--tls_ca"));
  }
  return grpc::SslServerCredentials(options);
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeChannelCredentials(const TlsFiles& tls) {
  if (!tls.enabled()) return grpc::InsecureChannelCredentials();
  if (tls.ca.empty()) return absl::InvalidArgumentError("TLS needs --tls_ca (the authority of the coordinator's certificate)");
  if (tls.cert.empty() != tls.key.empty())
    return absl::InvalidArgumentError("a client certificate needs both --tls_cert and --tls_key");
  grpc::SslCredentialsOptions options;
  ASSIGN_OR_RETURN(options.pem_root_certs, ReadPem(tls.ca, "--tls_ca"));
  if (!tls.cert.empty()) {
    ASSIGN_OR_RETURN(options.pem_cert_chain, ReadPem(tls.cert, "--tls_cert"));
    ASSIGN_OR_RETURN(options.pem_private_key, ReadPem(tls.key, "--tls_key"));
  }
  return grpc::SslCredentials(options);
}

absl::StatusOr<std::string> LoadToken(const std::string& token_file) {
  std::string token;
  if (!token_file.empty()) {
    std::ifstream in(token_file, std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot read --token_file ", token_file));
    std::stringstream buffer;
    buffer << in.rdbuf();
    token = std::string(absl::StripAsciiWhitespace(buffer.str()));
    if (token.empty()) return absl::InvalidArgumentError(absl::StrCat("--token_file ", token_file, " is empty"));
  } else if (const char* env = std::getenv("REPTILE_TOKEN"); env != nullptr) {
    token = std::string(absl::StripAsciiWhitespace(env));
  }
  for (char c : token)
    if (c < 0x21 || c > 0x7e) return absl::InvalidArgumentError("the token must be printable ASCII without spaces");
  return token;
}

void AttachToken(const std::string& token, grpc::ClientContext* context) {
  if (!token.empty()) context->AddMetadata("authorization", absl::StrCat("Bearer ", token));
}

grpc::Status CheckToken(const std::string& token, const grpc::ServerContext& context) {
  if (token.empty()) return grpc::Status::OK;
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end())
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "missing bearer token (authorization metadata)");
  const std::string expected = absl::StrCat("Bearer ", token);
  const std::string given(it->second.data(), it->second.size());
  if (given.size() != expected.size() || CRYPTO_memcmp(given.data(), expected.data(), given.size()) != 0)
    return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "wrong bearer token");
  return grpc::Status::OK;
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& address,
                                                           const SecurityOptions& security) {
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> credentials, MakeChannelCredentials(security.tls));
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  // A restarted coordinator is found again within a second or two.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  // In gRPC 1.51 this is also the connect timeout (default 20 s): a connect
  // sent while the coordinator's address was gone (a container being
  // replaced) gives up after 3 s instead. Not lower: one lost SYN is
  // retransmitted after 1 s and again after 3 s.
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 3000);
  // Tensor streams move megabytes per call: start with a wide flow-control
  // window instead of letting each stream grow one from 64 KB.
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 8 << 20);
  if (!security.server_name.empty()) args.SetSslTargetNameOverride(security.server_name);
  return grpc::CreateCustomChannel(address, credentials, args);
}

}  // namespace reptile
