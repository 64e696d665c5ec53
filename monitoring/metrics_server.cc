#include "monitoring/metrics_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "prometheus/collectable.h"
#include "prometheus/text_serializer.h"

namespace reptile {
namespace {

constexpr size_t kMaxRequestBytes = 8192;  // a request line and a few headers
constexpr int kIoTimeoutSeconds = 5;        // per read or write of one connection

void WriteAll(int fd, const std::string& data) {
  size_t sent = 0;
  while (sent < data.size()) {
    const ssize_t n = send(fd, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // the client went, or timed out
    sent += static_cast<size_t>(n);
  }
}

std::string Response(const std::string& status, const std::string& content_type, const std::string& body,
                     bool head) {
  return absl::StrCat("HTTP/1.1 ", status, "\r\nContent-Type: ", content_type, "\r\nContent-Length: ", body.size(),
                      "\r\nConnection: close\r\n\r\n", head ? "" : body);
}

}  // namespace

absl::StatusOr<std::string> MetricsListenAddress(const std::string& listen) {
  const std::string text(absl::StripAsciiWhitespace(listen));
  const size_t colon = text.rfind(':');
  const std::string host = colon == std::string::npos ? "127.0.0.1" : text.substr(0, colon);
  const std::string port_text = colon == std::string::npos ? text : text.substr(colon + 1);
  int port = -1;
  if (!absl::SimpleAtoi(port_text, &port) || port < 0 || port > 65535)
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address '", listen, "': want PORT or IP:PORT, e.g. 127.0.0.1:9464"));
  in_addr v4;
  in6_addr v6;
  const bool ipv6 = host.size() > 2 && host.front() == '[' && host.back() == ']' &&
                    inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), &v6) == 1;
  const bool ipv4 = inet_pton(AF_INET, host.c_str(), &v4) == 1;
  if (!ipv4 && !ipv6)
    return absl::InvalidArgumentError(absl::StrCat(
        "metrics address '", listen, "': the host must be an IP address, e.g. 127.0.0.1, 0.0.0.0 or [::1]"));
  return absl::StrCat(host, ":", port);
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(const std::string& listen) {
  absl::StatusOr<std::string> address = MetricsListenAddress(listen);
  if (!address.ok()) return address.status();
  const size_t colon = address->rfind(':');
  const std::string host = address->substr(0, colon);
  const int port = std::stoi(address->substr(colon + 1));
  const bool ipv6 = host.front() == '[';
  sockaddr_storage storage{};
  socklen_t length;
  if (ipv6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&storage);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(port);
    inet_pton(AF_INET6, host.substr(1, host.size() - 2).c_str(), &a->sin6_addr);
    length = sizeof(sockaddr_in6);
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&storage);
    a->sin_family = AF_INET;
    a->sin_port = htons(port);
    inet_pton(AF_INET, host.c_str(), &a->sin_addr);
    length = sizeof(sockaddr_in);
  }
  std::unique_ptr<MetricsServer> server(new MetricsServer());
  server->listen_fd_ = socket(ipv6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (server->listen_fd_ < 0) return absl::UnavailableError(absl::StrCat("metrics: socket: ", strerror(errno)));
  const int on = 1;
  setsockopt(server->listen_fd_, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));  // restarts within TIME_WAIT
  if (::bind(server->listen_fd_, reinterpret_cast<sockaddr*>(&storage), length) != 0 ||
      ::listen(server->listen_fd_, 16) != 0)
    return absl::UnavailableError(absl::StrCat("cannot serve metrics on ", *address, ": ", strerror(errno)));
  if (getsockname(server->listen_fd_, reinterpret_cast<sockaddr*>(&storage), &length) != 0)
    return absl::UnavailableError(absl::StrCat("metrics: getsockname: ", strerror(errno)));
  server->port_ = ntohs(ipv6 ? reinterpret_cast<sockaddr_in6*>(&storage)->sin6_port
                             : reinterpret_cast<sockaddr_in*>(&storage)->sin_port);
  server->address_ = absl::StrCat(host, ":", server->port_);
  MetricsServer* raw = server.get();
  server->thread_ = std::thread([raw] { raw->Serve(); });
  return server;
}

MetricsServer::~MetricsServer() {
  stop_.store(true);
  if (thread_.joinable()) thread_.join();
  if (listen_fd_ >= 0) close(listen_fd_);
}

void MetricsServer::Register(const std::shared_ptr<prometheus::Collectable>& collectable) {
  absl::MutexLock lock(&mu_);
  collectables_.push_back(collectable);
}

std::string MetricsServer::Scrape() {
  std::vector<prometheus::MetricFamily> families;
  {
    absl::MutexLock lock(&mu_);
    for (const std::weak_ptr<prometheus::Collectable>& weak : collectables_) {
      if (std::shared_ptr<prometheus::Collectable> collectable = weak.lock()) {
        std::vector<prometheus::MetricFamily> more = collectable->Collect();
        families.insert(families.end(), std::make_move_iterator(more.begin()), std::make_move_iterator(more.end()));
      }
    }
  }
  return prometheus::TextSerializer().Serialize(families);
}

void MetricsServer::Serve() {
  while (!stop_.load()) {
    pollfd listening{listen_fd_, POLLIN, 0};
    if (poll(&listening, 1, 200) <= 0) continue;  // the timeout lets the destructor stop it
    const int connection = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (connection < 0) continue;
    const timeval timeout{kIoTimeoutSeconds, 0};
    setsockopt(connection, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
    setsockopt(connection, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
    Answer(connection);
    close(connection);
  }
}

void MetricsServer::Answer(int connection) {
  std::string request;
  char buffer[2048];
  while (request.find("\r\n\r\n") == std::string::npos && request.find("\n\n") == std::string::npos) {
    if (request.size() > kMaxRequestBytes) {
      WriteAll(connection, Response("431 Request Header Fields Too Large", "text/plain", "request too large\n", false));
      return;
    }
    const ssize_t n = recv(connection, buffer, sizeof(buffer), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // closed or timed out before a whole request
    request.append(buffer, static_cast<size_t>(n));
  }
  // "GET /metrics HTTP/1.1"
  const std::vector<std::string> words =
      absl::StrSplit(request.substr(0, request.find_first_of("\r\n")), ' ', absl::SkipEmpty());
  if (words.size() != 3 || !absl::StartsWith(words[2], "HTTP/")) {
    WriteAll(connection, Response("400 Bad Request", "text/plain", "bad request\n", false));
    return;
  }
  const bool head = words[0] == "HEAD";
  if (words[0] != "GET" && !head) {
    WriteAll(connection, Response("405 Method Not Allowed", "text/plain", "GET /metrics\n", false));
    return;
  }
  const std::string path = words[1].substr(0, words[1].find('?'));
  if (path != "/metrics") {
    WriteAll(connection, Response("404 Not Found", "text/plain", "metrics are at /metrics\n", head));
    return;
  }
  WriteAll(connection, Response("200 OK", "text/plain; version=0.0.4; charset=utf-8", Scrape(), head));
}

}  // namespace reptile
