// README.md and docs/ checked against the tree they describe: the two
// commands are the ones the demo and CI run, every relative link resolves
// (headings included), and every `reptile COMMAND --flag` quoted in README is
// a command whose --help lists that flag. Reads files and runs the binary's
// --help only: no LibTorch, no data.

#include <algorithm>
#include <filesystem>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/child_process.h"
#include "tests/shell.h"

namespace reptile {
namespace {

using ::testing::HasSubstr;
using ::testing::IsSupersetOf;
using ::testing::Not;

namespace fs = std::filesystem;

std::string Source(const std::string& relative) { return std::string(REPTILE_SOURCE_DIR) + "/" + relative; }

std::string Read(const std::string& relative) {
  const std::string path = Source(relative);
  EXPECT_TRUE(fs::exists(path)) << path;
  return testing::ReadWholeFile(path);
}

// The markdown files a reader follows links through.
std::vector<std::string> MarkdownFiles() {
  std::vector<std::string> files = {"README.md", "deploy/README.md"};
  std::vector<std::string> docs;
  for (const auto& entry : fs::directory_iterator(Source("docs")))
    if (entry.path().extension() == ".md") docs.push_back("docs/" + entry.path().filename().string());
  std::sort(docs.begin(), docs.end());
  files.insert(files.end(), docs.begin(), docs.end());
  return files;
}

struct CodeBlock {
  std::string info;                // after the opening ```, e.g. "sh"
  std::vector<std::string> lines;
  std::string heading;             // the last "## " heading above it
};

// A markdown text split into its fenced code blocks and the prose between
// them (one string, fenced blocks replaced by empty lines).
struct Markdown {
  std::vector<CodeBlock> blocks;
  std::string prose;
};

Markdown Parse(const std::string& text) {
  Markdown markdown;
  std::string heading;
  CodeBlock* open = nullptr;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StartsWith(line, "```")) {
      if (open == nullptr) {
        markdown.blocks.push_back({std::string(absl::StripAsciiWhitespace(line.substr(3))), {}, heading});
        open = &markdown.blocks.back();
      } else {
        open = nullptr;
      }
      markdown.prose += "\n";
      continue;
    }
    if (open != nullptr) {
      open->lines.emplace_back(line);
      markdown.prose += "\n";
      continue;
    }
    if (absl::StartsWith(line, "## ")) heading = std::string(line.substr(3));
    absl::StrAppend(&markdown.prose, line, "\n");
  }
  EXPECT_EQ(open, nullptr) << "a code block is not closed";
  return markdown;
}

// The inline code spans of `prose` (`like this`), and the prose without them.
std::vector<std::string> InlineCode(const std::string& prose, std::string* without = nullptr) {
  std::vector<std::string> spans;
  std::string rest;
  size_t at = 0;
  while (true) {
    const size_t open = prose.find('`', at);
    const size_t close = open == std::string::npos ? std::string::npos : prose.find('`', open + 1);
    if (close == std::string::npos) {
      rest += prose.substr(at);
      break;
    }
    rest += prose.substr(at, open - at);
    spans.push_back(prose.substr(open + 1, close - open - 1));
    at = close + 1;
  }
  if (without != nullptr) *without = rest;
  return spans;
}

// A code line without its shell comment ("  # ..." or a whole-line "#").
std::string WithoutComment(absl::string_view line) {
  line = absl::StripLeadingAsciiWhitespace(line);
  if (absl::StartsWith(line, "#")) return "";
  const size_t hash = line.find(" #");
  return std::string(absl::StripTrailingAsciiWhitespace(line.substr(0, hash)));
}

// The shell commands of a code block: comments dropped, lines continued with
// a trailing backslash joined, empty lines skipped.
std::vector<std::string> Commands(const std::vector<std::string>& lines) {
  std::vector<std::string> commands;
  std::string pending;
  for (const std::string& raw : lines) {
    std::string line = WithoutComment(raw);
    const bool continued = absl::EndsWith(line, "\\");
    if (continued) line.pop_back();
    absl::StrAppend(&pending, pending.empty() ? "" : " ", absl::StripAsciiWhitespace(line));
    if (continued) continue;
    if (!pending.empty()) commands.push_back(pending);
    pending.clear();
  }
  if (!pending.empty()) commands.push_back(pending);
  return commands;
}

// The lines of a shell script that are commands, without the prologue every
// script here has (set -euo pipefail, cd to the repository root).
std::vector<std::string> ScriptCommands(const std::string& text) {
  std::vector<std::string> commands;
  const std::vector<std::string> lines = absl::StrSplit(text, '\n');
  for (const std::string& command : Commands(lines)) {
    if (command == "set -euo pipefail" || command == "cd \"$(dirname \"$0\")/..\"") continue;
    commands.push_back(command);
  }
  return commands;
}

// ---- the two commands ---------------------------------------------------------

// The block under README's "Two commands" heading.
std::vector<std::string> ReadmeTwoCommands(const std::string& readme) {
  for (const CodeBlock& block : Parse(readme).blocks)
    if (absl::StartsWith(block.heading, "Two commands")) return Commands(block.lines);
  ADD_FAILURE() << "README.md has no code block under a \"## Two commands\" heading";
  return {};
}

bool Contains(const std::vector<std::string>& lines, absl::string_view needle) {
  return std::any_of(lines.begin(), lines.end(), [&](const std::string& line) { return absl::StrContains(line, needle); });
}

TEST(ReadmeTest, TwoCommandsAreWhatTheDemoAndCiRun) {
  const std::vector<std::string> two = ReadmeTwoCommands(Read("README.md"));
  ASSERT_EQ(two, (std::vector<std::string>{"bash scripts/demo.sh", "bash scripts/test.sh"}));

  // CI runs README's test command and nothing else.
  EXPECT_EQ(ScriptCommands(Read(".ci/run")), std::vector<std::string>{two[1]});

  // The demo installs the build's packages only, builds the binary only,
  // then trains and evaluates configs/demo.textproto.
  const std::vector<std::string> demo = ScriptCommands(Read("scripts/demo.sh"));
  EXPECT_THAT(demo, ::testing::Contains("REPTILE_DEPS=build bash scripts/install_deps.sh"));
  EXPECT_THAT(demo, ::testing::Contains("bash scripts/build.sh reptile"));
  EXPECT_TRUE(Contains(demo, "./build/reptile train --config configs/demo.textproto")) << absl::StrJoin(demo, "\n");
  EXPECT_TRUE(fs::exists(Source("configs/demo.textproto")));

  // The test command installs and builds everything, then runs ctest.
  const std::vector<std::string> test = ScriptCommands(Read("scripts/test.sh"));
  EXPECT_THAT(test, ::testing::Contains("bash scripts/install_deps.sh"));
  EXPECT_THAT(test, ::testing::Contains("bash scripts/build.sh"));
  EXPECT_FALSE(Contains(test, "REPTILE_DEPS")) << absl::StrJoin(test, "\n");
  EXPECT_TRUE(Contains(test, "ctest ")) << absl::StrJoin(test, "\n");
}

// ---- links --------------------------------------------------------------------

// GitHub's anchor for a heading: lower case, spaces to '-', punctuation and
// other symbols dropped (non-ASCII characters are dropped too: no heading a
// link points at has a non-ASCII letter).
std::string Anchor(absl::string_view heading) {
  std::string anchor;
  for (char c : heading) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '_') {
      anchor += absl::ascii_tolower(c);
    } else if (c == ' ') {
      anchor += '-';
    }
  }
  return anchor;
}

// The anchors of a markdown file's headings, repeated ones numbered as
// GitHub does (name, name-1, name-2, ...).
std::set<std::string> Anchors(const std::string& text) {
  std::set<std::string> anchors;
  std::map<std::string, int> seen;
  for (absl::string_view line : absl::StrSplit(Parse(text).prose, '\n')) {
    const size_t level = line.find_first_not_of('#');
    if (level == 0 || level > 6 || level == absl::string_view::npos || line[level] != ' ') continue;
    const std::string anchor = Anchor(absl::StripAsciiWhitespace(line.substr(level)));
    const int count = seen[anchor]++;
    anchors.insert(count == 0 ? anchor : absl::StrCat(anchor, "-", count));
  }
  return anchors;
}

// The targets of the markdown links [text](target) in `prose`.
std::vector<std::string> LinkTargets(const std::string& prose) {
  std::vector<std::string> targets;
  for (size_t at = prose.find("]("); at != std::string::npos; at = prose.find("](", at + 2)) {
    const size_t close = prose.find(')', at + 2);
    if (close == std::string::npos) break;
    std::string target = prose.substr(at + 2, close - at - 2);
    target = std::string(absl::StripAsciiWhitespace(target.substr(0, target.find(' '))));  // [a](b "title")
    targets.push_back(target);
  }
  return targets;
}

bool IsExternal(const std::string& target) {
  const size_t colon = target.find(':');
  return colon != std::string::npos && target.find('/') > colon;  // https:, mailto:
}

TEST(DocsTest, EveryRelativeLinkResolvesToAFileAndHeading) {
  int relative = 0, with_anchor = 0;
  for (const std::string& file : MarkdownFiles()) {
    std::string prose;
    InlineCode(Parse(Read(file)).prose, &prose);  // `[a](b)` in code is not a link
    for (const std::string& target : LinkTargets(prose)) {
      if (IsExternal(target)) continue;
      ++relative;
      const size_t hash = target.find('#');
      const std::string path = target.substr(0, hash);
      const fs::path resolved =
          path.empty() ? fs::path(Source(file)) : (fs::path(Source(file)).parent_path() / path).lexically_normal();
      EXPECT_TRUE(fs::exists(resolved)) << file << ": (" << target << ") points at " << resolved.string()
                                        << ", which does not exist";
      if (hash == std::string::npos || resolved.extension() != ".md" || !fs::exists(resolved)) continue;
      ++with_anchor;
      const std::string anchor = target.substr(hash + 1);
      EXPECT_THAT(Anchors(testing::ReadWholeFile(resolved.string())), ::testing::Contains(anchor))
          << file << ": (" << target << "): no heading with anchor #" << anchor << " in " << resolved.string();
    }
  }
  // README alone has dozens; a parser that finds none checks nothing.
  EXPECT_GT(relative, 50);
  EXPECT_GT(with_anchor, 20);
}

TEST(DocsTest, AnchorsAreGitHubs) {
  EXPECT_EQ(Anchor("Two commands on a fresh Debian bookworm machine"), "two-commands-on-a-fresh-debian-bookworm-machine");
  EXPECT_EQ(Anchor("ResNet-12, 80M parameters, through the TorchScript path"),
            "resnet-12-80m-parameters-through-the-torchscript-path");
  EXPECT_EQ(Anchor("When ranks cannot reach each other: deadlines and interfaces"),
            "when-ranks-cannot-reach-each-other-deadlines-and-interfaces");
  EXPECT_EQ(Anchor("`reptile train` — the demo"), "reptile-train--the-demo");
  EXPECT_EQ(Anchors("# A\n## B\n```\n# not a heading\n```\n## B\n#C\n"),
            (std::set<std::string>{"a", "b", "b-1"}));
  EXPECT_THAT(LinkTargets("see [x](docs/a.md#b) and [y](https://e.org) and [z](c.md \"t\")"),
              ::testing::ElementsAre("docs/a.md#b", "https://e.org", "c.md"));
}

// ---- quoted commands --------------------------------------------------------------

struct Quoted {
  std::string command;              // "" for `reptile --help`
  std::vector<std::string> flags;   // names, without "--" and "=value"
  std::string text;                 // as quoted
};

// `reptile COMMAND --flag ...` (or build/reptile, or after mpirun ...) in a
// shell command; nullopt-like empty text if there is no reptile in it.
Quoted ParseReptileCommand(const std::string& command) {
  Quoted quoted;
  std::vector<std::string> words;
  for (absl::string_view word : absl::StrSplit(command, absl::ByAnyChar(" \t"), absl::SkipEmpty()))
    words.emplace_back(absl::StripSuffix(absl::StripPrefix(word, "["), "]"));  // [--flag value]
  auto it = std::find_if(words.begin(), words.end(),
                         [](const std::string& w) { return w == "reptile" || absl::EndsWith(w, "/reptile"); });
  if (it == words.end()) return quoted;
  quoted.text = command;
  for (++it; it != words.end(); ++it) {
    const std::string& word = *it;
    if (word == "|" || word == ";" || word == "&&" || word == "||" || absl::StartsWith(word, ">")) break;
    if (absl::StartsWith(word, "--")) {
      quoted.flags.push_back(word.substr(2, word.find('=') - 2));
    } else if (quoted.command.empty() && quoted.flags.empty() && absl::ascii_isalpha(word[0])) {
      quoted.command = word;
    }
  }
  return quoted;
}

// Every reptile command quoted in README: code blocks and inline code.
std::vector<Quoted> ReadmeCommands() {
  const Markdown readme = Parse(Read("README.md"));
  std::vector<std::string> commands;
  for (const CodeBlock& block : readme.blocks)
    for (const std::string& command : Commands(block.lines)) commands.push_back(command);
  for (const std::string& span : InlineCode(readme.prose))
    if (absl::StartsWith(span, "reptile ") || absl::StartsWith(span, "build/reptile ")) commands.push_back(span);
  std::vector<Quoted> quoted;
  for (const std::string& command : commands) {
    Quoted q = ParseReptileCommand(command);
    if (!q.text.empty()) quoted.push_back(q);
  }
  return quoted;
}

TEST(ReadmeTest, ParsesQuotedCommands) {
  Quoted worker = ParseReptileCommand(
      "build/reptile worker --coordinator nodeA:7070 --tls_ca ca.pem [--data_dir /x] [--learners $(nproc)]");
  EXPECT_EQ(worker.command, "worker");
  EXPECT_THAT(worker.flags, ::testing::ElementsAre("coordinator", "tls_ca", "data_dir", "learners"));
  Quoted mpi = ParseReptileCommand("mpirun -np 4 build/reptile mpi --config=c.textproto --run_dir r");
  EXPECT_EQ(mpi.command, "mpi");
  EXPECT_THAT(mpi.flags, ::testing::ElementsAre("config", "run_dir"));
  Quoted help = ParseReptileCommand("build/reptile --help");
  EXPECT_EQ(help.command, "");
  EXPECT_THAT(help.flags, ::testing::ElementsAre("help"));
  EXPECT_EQ(ParseReptileCommand("kubectl apply -k deploy/k8s/overlays/cluster").text, "");
  EXPECT_EQ(Commands({"a \\", "  --b c  # note", "# whole", "", "d"}), (std::vector<std::string>{"a --b c", "d"}));
}

TEST(ReadmeTest, EveryQuotedCommandIsOneWhoseHelpListsItsFlags) {
  const std::vector<Quoted> quoted = ReadmeCommands();
  std::set<std::string> commands;
  std::map<std::string, testing::ShellResult> helps;
  int flags = 0;
  for (const Quoted& q : quoted) {
    commands.insert(q.command);
    if (helps.count(q.command) == 0) helps[q.command] = testing::RunReptile(q.command + " --help");
    const testing::ShellResult& help = helps[q.command];
    ASSERT_EQ(help.exit_code, 0) << "`" << q.text << "`: `reptile " << q.command << " --help` exits "
                                 << help.exit_code << ": " << help.output;
    // An unknown command's --help is the general help.
    const std::string usage = q.command.empty() ? "usage: reptile COMMAND" : "usage: reptile " + q.command + " ";
    if (!absl::StrContains(help.output, usage)) {
      ADD_FAILURE() << "`" << q.text << "`: " << q.command << " is not a command:\n" << help.output;
      continue;
    }
    for (const std::string& flag : q.flags) {
      if (flag == "help") continue;
      ++flags;
      EXPECT_THAT(help.output, HasSubstr("  --" + flag + "="))
          << "`" << q.text << "`: `reptile " << q.command << " --help` does not list --" << flag << ":\n"
          << help.output;
    }
  }
  std::cout << quoted.size() << " commands quoted, " << flags << " flags checked\n";
  EXPECT_GT(flags, 20);
  // The user guide quotes every command a user runs.
  EXPECT_THAT(commands, IsSupersetOf({"train", "eval", "adapt", "export", "inspect", "plot", "analyze", "coordinator",
                                      "worker", "mpi"}));
}

}  // namespace
}  // namespace reptile
