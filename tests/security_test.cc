// TLS, mutual TLS and bearer tokens between real coordinator and worker
// processes, with throwaway certificates made by `openssl` for the test.
#include <cstdlib>
#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/child_process.h"
#include "tests/test_support.h"
#include "transport/grpc/coordinator_client.h"
#include "transport/grpc/security.h"

namespace reptile::testing {
namespace {

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
        "leaf rogue_client rogue_ca DNS:worker\n",
        "echo s3cret-token > token; echo not-the-token > wrong_token\n");
    ASSERT_EQ(std::system(script.c_str()), 0) << "openssl failed";
    run_ = TempDir("run");
  }

  std::string Pki(const std::string& name) const { return pki_ + "/" + name; }

  std::unique_ptr<ChildProcess> StartCoordinator(const std::vector<std::string>& flags) {
    const std::string port_file = run_ + ".port";
    std::filesystem::remove(port_file);
    std::vector<std::string> args = {REPTILE_BINARY, "coordinator", "--config", SourcePath("configs/sine.textproto"),
                                     "--run_dir", run_, "--listen", "127.0.0.1:0", "--port_file", port_file};
    args.insert(args.end(), flags.begin(), flags.end());
    args.insert(args.end(), kOverrides.begin(), kOverrides.end());
    auto child = ChildProcess::Start(args, run_ + "_coordinator");
    for (int i = 0; i < 600 && !std::filesystem::exists(port_file); ++i) {
      if (!child->running()) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    EXPECT_TRUE(std::filesystem::exists(port_file)) << child->err();
    address_ = absl::StrCat("127.0.0.1:", std::atoi(ReadWholeFile(port_file).c_str()));
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
  client.token = "not-the-token";
  status = Probe(client);
  EXPECT_EQ(status.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(absl::StrContains(status.message(), "wrong bearer token")) << status;
  SecurityOptions plain;  // plain text to a TLS port: no connection at all
  plain.token = "s3cret-token";
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

}  // namespace
}  // namespace reptile::testing
