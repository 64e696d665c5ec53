// An HTTP endpoint serving GET /metrics in the Prometheus text format, for
// the coordinator and the workers: what the Collectables registered with it
// (a prometheus::Registry, say) hold at the moment of each scrape, on a
// thread of its own, one connection at a time (Prometheus scrapes a target
// sequentially). Thread-safe.
//
// Why not prometheus-cpp's Exposer: it runs on civetweb, which Debian builds
// with 100 KiB thread stacks, and in this process (LibTorch, OpenBLAS and
// glog bring ~105 KiB of static TLS) glibc refuses to create such threads:
// the Exposer fails with "Cannot create threads". The metrics themselves are
// prometheus-cpp's (core: Registry, Counter, Gauge, TextSerializer).
#ifndef REPTILE_MONITORING_METRICS_SERVER_H_
#define REPTILE_MONITORING_METRICS_SERVER_H_

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace prometheus {
class Collectable;
}  // namespace prometheus

namespace reptile {

// "9464" -> "127.0.0.1:9464" (loopback unless an address is given); an
// "IP:PORT" or "[IPv6]:PORT" is kept. InvalidArgument for anything else.
absl::StatusOr<std::string> MetricsListenAddress(const std::string& listen);

class MetricsServer {
 public:
  // Listens on `listen` (see MetricsListenAddress; port 0: any free port).
  // Unavailable if the address cannot be bound (in use, say).
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& listen);
  // Stops serving (within 0.2 s, plus an answer in progress).
  ~MetricsServer();
  MetricsServer(const MetricsServer&) = delete;
  MetricsServer& operator=(const MetricsServer&) = delete;

  // Serves `collectable` at /metrics while it lives; the server holds only a
  // weak reference.
  void Register(const std::shared_ptr<prometheus::Collectable>& collectable);

  int port() const { return port_; }
  const std::string& address() const { return address_; }  // as bound, e.g. 127.0.0.1:9464

  // The text a GET /metrics answers now.
  std::string Scrape();

 private:
  MetricsServer() = default;
  void Serve();
  void Answer(int connection);

  int listen_fd_ = -1;
  int port_ = 0;
  std::string address_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  absl::Mutex mu_;
  std::vector<std::weak_ptr<prometheus::Collectable>> collectables_ ABSL_GUARDED_BY(mu_);
};

}  // namespace reptile

#endif  // REPTILE_MONITORING_METRICS_SERVER_H_
