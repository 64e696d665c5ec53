// TLS, mutual TLS and bearer tokens between real coordinator and worker
// processes, with throwaway certificates made by `openssl` for the test.
#include <sys/stat.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "tests/child_process.h"
#include "tests/test_support.h"
#include "transport/grpc/coordinator_client.h"
#include "transport/grpc/security.h"

namespace reptile::testing {
namespace {

// Tokens as `reptile` accepts them: 16 characters or more.
constexpr char kToken[] = "s3cret-token-of-the-security-test";
constexpr char kWrongToken[] = "not-the-token-of-the-security-test";

const std::vector<std::string> kOverrides = {"outer.rounds=40", "outer.meta_batch_size=2", "eval.every_rounds=0",
                                             "eval.final_episodes=5"};

class SecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    pki_ = TempDir("pki");
    const std::string script = absl::StrCat(
        "set -e; cd ", pki_, "\n",
        "key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:prime256v1 -out $1 2>/dev/null; }\n",
        "ca() { key $1.key; openssl req -x509 -new -key $1.key -out $1.pem -days 2 -subj /CN=$1 2>/dev/null; }\n",
        "leaf() { key $1.key; openssl req -new -key $1.key -out $1.csr -subj /CN=$1 2>/dev/null;\n",
        "  printf 'subjectAltName=%s\\n' \"$3\" > $1.ext;\n",
        "  openssl x509 -req -in $1.csr -CA $2.pem -CAkey $2.key -CAcreateserial -out $1.pem -days 2 "
        "-extfile $1.ext 2>/dev/null; }\n",
        "ca ca; ca rogue_ca\n",
        "leaf server ca IP:127.0.0.1,DNS:localhost\n",
        "leaf client ca DNS:worker\n",
        "leaf rogue_client rogue_ca DNS:worker\n");
    ASSERT_EQ(std::system(script.c_str()), 0) << "openssl failed";
    WriteTokenFile(Pki("token"), kToken);
    WriteTokenFile(Pki("wrong_token"), kWrongToken);
    run_ = TempDir("run");
  }

  std::string Pki(const std::string& name) const { return pki_ + "/" + name; }

  std::unique_ptr<ChildProcess> StartCoordinator(const std::vector<std::string>& flags) {
    std::vector<std::string> args = {REPTILE_BINARY, "coordinator", "--config", SourcePath("configs/sine.textproto"),
                                     "--run_dir", run_, "--listen", "127.0.0.1:0"};
    args.insert(args.end(), flags.begin(), flags.end());
    args.insert(args.end(), kOverrides.begin(), kOverrides.end());
    int port = 0;
    auto child = StartListening(args, run_, run_ + "_coordinator", &port);
    address_ = absl::StrCat("127.0.0.1:", port);
    return child;
  }

  std::unique_ptr<ChildProcess> StartWorker(const std::vector<std::string>& flags, const std::string& name) {
    std::vector<std::string> args = {REPTILE_BINARY, "worker", "--coordinator", address_};
    args.insert(args.end(), flags.begin(), flags.end());
    return ChildProcess::Start(args, run_ + "_" + name);
  }

  // GetRunConfig through a client with `security`: the status tells whether
  // the coordinator let this client in.
  absl::Status Probe(const SecurityOptions& security) {
    absl::StatusOr<std::unique_ptr<CoordinatorClient>> client = CoordinatorClient::Connect(address_, security);
    EXPECT_TRUE(client.ok()) << client.status();
    if (!client.ok()) return client.status();
    return (*client)->GetRunConfig().status();
  }

  std::string ThreadsReference() {
    std::vector<std::string> args = {REPTILE_BINARY, "train", "--config", SourcePath("configs/sine.textproto"),
                                     "--run_dir", TempDir("reference"), "runtime.local_workers=THREADS"};
    args.insert(args.end(), kOverrides.begin(), kOverrides.end());
    auto train = ChildProcess::Start(args, run_ + "_reference");
    EXPECT_EQ(train->ExitCode(120), 0) << train->err();
    return ParameterSha(train->out());
  }

  std::string pki_, run_, address_;
};

TEST_F(SecurityTest, TlsWithATokenTrainsAndRefusesWrongOrMissingTokens) {
  auto coordinator = StartCoordinator(
      {"--tls_cert", Pki("server.pem"), "--tls_key", Pki("server.key"), "--token_file", Pki("token")});
  EXPECT_TRUE(absl::StrContains(coordinator->err(), "TLS, bearer token")) << coordinator->err();
  SecurityOptions client;
  client.tls.ca = Pki("ca.pem");
  absl::Status status = Probe(client);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(absl::StrContains(status.message(), "missing bearer token")) << status;
  client.token = kWrongToken;
  status = Probe(client);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(absl::StrContains(status.message(), "wrong bearer token")) << status;
  SecurityOptions plain;  // plain text to a TLS port: no connection at all
  plain.token = kToken;
  EXPECT_FALSE(Probe(plain).ok());

  // A worker with the wrong token gives up with the reason; the right one trains.
  auto intruder = StartWorker({"--tls_ca", Pki("ca.pem"), "--token_file", Pki("wrong_token")}, "intruder");
  EXPECT_EQ(intruder->ExitCode(60), 1);
  EXPECT_TRUE(absl::StrContains(intruder->err(), "wrong bearer token")) << intruder->err();
  auto worker = StartWorker({"--tls_ca", Pki("ca.pem"), "--token_file", Pki("token")}, "worker");
  ASSERT_EQ(coordinator->ExitCode(120), 0) << coordinator->err();
  EXPECT_EQ(worker->ExitCode(30), 0) << worker->err();
  EXPECT_EQ(ParameterSha(coordinator->out()), ThreadsReference());
}

TEST_F(SecurityTest, MutualTlsAdmitsOnlyClientsWithATrustedCertificate) {
  auto coordinator = StartCoordinator(
      {"--tls_cert", Pki("server.pem"), "--tls_key", Pki("server.key"), "--tls_ca", Pki("ca.pem")});
  EXPECT_TRUE(absl::StrContains(coordinator->err(), "mutual TLS")) << coordinator->err();
  SecurityOptions client;
  client.tls.ca = Pki("ca.pem");
  EXPECT_FALSE(Probe(client).ok()) << "no client certificate";
  client.tls.cert = Pki("rogue_client.pem");
  client.tls.key = Pki("rogue_client.key");
  EXPECT_FALSE(Probe(client).ok()) << "client certificate from an untrusted authority";
  client.tls.cert = Pki("client.pem");
  client.tls.key = Pki("client.key");
  absl::Status status = Probe(client);
  EXPECT_TRUE(status.ok()) << status;

  auto worker = StartWorker(
      {"--tls_ca", Pki("ca.pem"), "--tls_cert", Pki("client.pem"), "--tls_key", Pki("client.key")}, "worker");
  ASSERT_EQ(coordinator->ExitCode(120), 0) << coordinator->err();
  EXPECT_EQ(worker->ExitCode(30), 0) << worker->err();
  EXPECT_EQ(ParameterSha(coordinator->out()), ThreadsReference());
}

TEST_F(SecurityTest, MissingOrMalformedCertificateFilesAreClearErrors) {
  auto missing = ChildProcess::Start({REPTILE_BINARY, "coordinator", "--config", SourcePath("configs/sine.textproto"),
                                      "--run_dir", run_, "--listen", "127.0.0.1:0", "--tls_cert",
                                      Pki("nope.pem"), "--tls_key", Pki("server.key")},
                                     run_ + "_missing");
  EXPECT_EQ(missing->ExitCode(60), 1);
  EXPECT_TRUE(absl::StrContains(missing->err(), "cannot read --tls_cert file")) << missing->err();
  auto not_pem = ChildProcess::Start({REPTILE_BINARY, "coordinator", "--config", SourcePath("configs/sine.textproto"),
                                      "--run_dir", run_, "--listen", "127.0.0.1:0", "--tls_cert", Pki("token"),
                                      "--tls_key", Pki("server.key")},
                                     run_ + "_not_pem");
  EXPECT_EQ(not_pem->ExitCode(60), 1);
  EXPECT_TRUE(absl::StrContains(not_pem->err(), "is not PEM")) << not_pem->err();
}

// A token file is refused like ssh refuses a private key others may read,
// and a token that is empty, spans lines or holds spaces or control
// characters, or is short enough to guess, is refused whichever way it comes.
TEST(LoadTokenTest, RefusesFilesOthersMayReadAndWeakTokensWithOneLineNamingTheSource) {
  const std::string dir = TempDir("tokens");
  const std::string file = dir + "/token";
  auto load = [&](const std::string& contents, mode_t mode) {
    std::ofstream(file, std::ios::binary | std::ios::trunc) << contents;
    EXPECT_EQ(chmod(file.c_str(), mode), 0);
    return LoadToken(file);
  };
  auto expect_refused = [&](const absl::StatusOr<std::string>& token, absl::StatusCode code,
                            const std::vector<std::string>& parts) {
    ASSERT_FALSE(token.ok()) << *token;
    EXPECT_EQ(token.status().code(), code) << token.status();
    const std::string message(token.status().message());
    EXPECT_EQ(message.find('\n'), std::string::npos) << message;
    EXPECT_FALSE(absl::StrContains(message, kToken)) << "the error shows the token: " << message;
    for (const std::string& part : parts) EXPECT_TRUE(absl::StrContains(message, part)) << message;
  };
  const std::string line = absl::StrCat(kToken, "\n");

  EXPECT_EQ(load(line, 0600).value_or("refused"), kToken);
  EXPECT_EQ(load(line, 0400).value_or("refused"), kToken);
  EXPECT_EQ(load(absl::StrCat(kToken, "\r\n"), 0600).value_or("refused"), kToken);
  EXPECT_EQ(load(kToken, 0600).value_or("refused"), kToken);
  for (const mode_t mode : {0644, 0640, 0604, 0620, 0602, 0660}) {
    SCOPED_TRACE(mode);
    expect_refused(load(line, mode), absl::StatusCode::kFailedPrecondition,
                   {"--token_file " + file, absl::StrFormat("mode %04o", mode), "chmod 600 " + file});
  }
  // Kubernetes with fsGroup mounts a Secret's files group-readable whatever
  // their defaultMode: the error says what to do instead.
  expect_refused(load(line, 0440), absl::StatusCode::kFailedPrecondition, {"mode 0440", "$REPTILE_TOKEN"});

  expect_refused(load("", 0600), absl::StatusCode::kInvalidArgument, {file, "is empty"});
  expect_refused(load("\n", 0600), absl::StatusCode::kInvalidArgument, {file, "is empty"});
  expect_refused(load(absl::StrCat(kToken, "\n\n"), 0600), absl::StatusCode::kInvalidArgument,
                 {file, "byte 0x0a at position 33", "one line"});
  expect_refused(load(absl::StrCat(" ", kToken), 0600), absl::StatusCode::kInvalidArgument,
                 {"byte 0x20 at position 0"});
  expect_refused(load("s3cret token with a space\n", 0600), absl::StatusCode::kInvalidArgument, {"byte 0x20"});
  expect_refused(load(absl::StrCat(kToken, "\t\n"), 0600), absl::StatusCode::kInvalidArgument, {"byte 0x09"});
  expect_refused(load("s3cret\x01token-with-a-control\n", 0600), absl::StatusCode::kInvalidArgument, {"byte 0x01"});
  expect_refused(load("s3cret-t\xc3\xb6ken-non-ascii\n", 0600), absl::StatusCode::kInvalidArgument, {"byte 0xc3"});
  expect_refused(load("s3cret-token\n", 0600), absl::StatusCode::kInvalidArgument,
                 {file, "12 characters, fewer than 16", "guess", "openssl rand -hex 32"});
  EXPECT_EQ(load("0123456789abcdef\n", 0600).value_or("refused"), "0123456789abcdef");

  std::filesystem::remove(file);
  expect_refused(LoadToken(file), absl::StatusCode::kNotFound, {"cannot read --token_file " + file});
  expect_refused(LoadToken(dir), absl::StatusCode::kInvalidArgument, {dir, "not a regular file"});

  // The environment's token follows the same rules; no token at all is "".
  ASSERT_EQ(setenv("REPTILE_TOKEN", "short", 1), 0);
  expect_refused(LoadToken(""), absl::StatusCode::kInvalidArgument, {"$REPTILE_TOKEN", "5 characters"});
  ASSERT_EQ(setenv("REPTILE_TOKEN", line.c_str(), 1), 0);
  EXPECT_EQ(LoadToken("").value_or("refused"), kToken);
  ASSERT_EQ(unsetenv("REPTILE_TOKEN"), 0);
  EXPECT_EQ(LoadToken("").value_or("refused"), "");
}

TEST_F(SecurityTest, ACoordinatorOrWorkerGivenATokenFileOthersMayReadStopsWithTheFix) {
  ASSERT_EQ(chmod(Pki("token").c_str(), 0644), 0);
  auto coordinator = ChildProcess::Start({REPTILE_BINARY, "coordinator", "--config", SourcePath("configs/sine.textproto"),
                                          "--run_dir", run_, "--listen", "127.0.0.1:0", "--token_file", Pki("token")},
                                         run_ + "_coordinator");
  EXPECT_EQ(coordinator->ExitCode(60), 1);
  EXPECT_TRUE(absl::StrContains(
      coordinator->err(),
      absl::StrCat("reptile coordinator: error: --token_file ", Pki("token"),
                   " has mode 0644: a bearer token must not be readable or writable by group or others; "
                   "run chmod 600 ", Pki("token"), "\n")))
      << coordinator->err();
  auto worker = ChildProcess::Start({REPTILE_BINARY, "worker", "--coordinator", "127.0.0.1:1", "--token_file",
                                     Pki("token")},
                                    run_ + "_worker");
  EXPECT_EQ(worker->ExitCode(60), 1);
  EXPECT_TRUE(absl::StrContains(worker->err(), "chmod 600 " + Pki("token"))) << worker->err();
}

}  // namespace
}  // namespace reptile::testing
