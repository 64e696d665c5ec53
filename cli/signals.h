// SIGINT and SIGTERM, delivered as an ordinary function call on a thread of
// their own, so that a stop request may lock mutexes and talk to the network.
#ifndef REPTILE_CLI_SIGNALS_H_
#define REPTILE_CLI_SIGNALS_H_

#include <functional>

namespace reptile {

// Call first thing in main(), before any thread starts: blocks the signals in
// every thread and starts the one that waits for them. The first signal calls
// the stop handler; a second one, or one with no handler set, ends the
// process at once with status 128 + signal.
void InstallStopSignals();

// The handler for the next signal; an empty function clears it.
void SetStopHandler(std::function<void()> handler);

// The signals InstallStopSignals() blocked, unblocked again; for a child
// process between fork() and exec(). Async-signal-safe.
void UnblockStopSignalsInChild();

}  // namespace reptile

#endif  // REPTILE_CLI_SIGNALS_H_
