// SIGINT and SIGTERM, delivered as an ordinary function call on a thread of
// their own, so that a stop request may lock mutexes and talk to the network.
//
// The guarantee that makes a handler capturing references safe: once
// SetStopHandler() returns, the handler it replaced is not running and never
// will run again, so whatever that handler refers to may be destroyed. To give
// it, SetStopHandler() waits for a running handler to return. Hence a handler
// must not wait for the thread that calls SetStopHandler() (for a lock it
// holds across that call, or for it to finish); it may log, take locks of its
// own and call SetStopHandler() itself, which then replaces the handler
// without waiting.
#ifndef REPTILE_CLI_SIGNALS_H_
#define REPTILE_CLI_SIGNALS_H_

#include <functional>

namespace reptile {

// Call first thing in main(), before any thread starts: blocks the signals in
// every thread and starts the one that waits for them. The first signal calls
// the stop handler; a second one, or one with no handler set, ends the
// process at once with status 128 + signal. (A second signal that arrives
// while the handler runs is acted on when it returns.)
void InstallStopSignals();

// The handler for the next signal; an empty function clears it. Waits for the
// current handler to return if it is running (unless called from within it).
// If a stop was already requested (an earlier handler took it, perhaps one
// that only held it, like [] {}), the new handler is called at once, in the
// calling thread: a stop that arrives while a command is still starting
// reaches the handler it sets up later.
void SetStopHandler(std::function<void()> handler);

// The signals InstallStopSignals() blocked, unblocked again; for a child
// process between fork() and exec(). Async-signal-safe.
void UnblockStopSignalsInChild();

}  // namespace reptile

#endif  // REPTILE_CLI_SIGNALS_H_
