import Foundation

/// The real `relay serve` as a child process on an ephemeral loopback port.
public struct RelayProcess: Sendable {
    public let process: ChildProcess
    public let port: Int
    private let logged: LoggedText

    /// The last lines the relay logged (up to about 64 KiB), for a failing test to show.
    public var recentLog: String { logged.get() }

    /// The relay exited or did not listen in time; what it logged.
    public struct DidNotStart: Error, CustomStringConvertible {
        public var log: String
        public var description: String { "the relay did not start: \(log)" }

        public init(log: String) { self.log = log }
    }

    /// Starts `binary serve` with exactly `environment` (plus PATH, RELAY_PORT=0, and a store of
    /// its own unless `RELAY_DB` is given); returns once it says where it listens. Its log keeps
    /// being drained so it never blocks on a full pipe. With `cpu`, it runs pinned to that core
    /// (through `taskset`, which execs it: the process id stays the relay's).
    /// `arguments` follow `serve`; it runs in `directory` (default: the temporary directory, where no `.env` is).
    public static func start(
        binary: URL,
        environment: [String: String],
        arguments: [String] = [],
        directory: URL? = nil,
        cpu: Int? = nil
    ) async throws -> RelayProcess {
        let store = FileManager.default.temporaryDirectory.appendingPathComponent("relay-\(UUID().uuidString).sqlite").path
        let process = try ChildProcess.run(
            cpu == nil ? binary.path : "/usr/bin/taskset",
            (cpu.map { ["-c", String($0), binary.path] } ?? []) + ["serve"] + arguments,
            environment: environment.merging(["PATH": "/usr/bin:/bin", "RELAY_PORT": "0", "RELAY_DB": store]) { old, _ in old },
            directory: (directory ?? FileManager.default.temporaryDirectory).path,
            standardError: .pipe
        )
        let log = process.standardError!
        let logged = LoggedText()
        let port: Int? = try? await withDeadline(.seconds(30), "the relay to listen") { await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                var seen = ""
                var resumed = false
                while true {
                    let chunk = log.availableData
                    if chunk.isEmpty { break }
                    logged.append(String(decoding: chunk, as: UTF8.self))
                    guard !resumed else { continue }
                    seen += String(decoding: chunk, as: UTF8.self)
                    if let range = seen.range(of: "listening on 127.0.0.1:"), let port = Int(seen[range.upperBound...].prefix { $0.isNumber }) {
                        resumed = true
                        continuation.resume(returning: port)
                    }
                }
                if !resumed { continuation.resume(returning: nil) }
            }
        } }
        guard let port else {
            Foundation.kill(process.processIdentifier, SIGKILL)
            Thread.detachNewThread { process.waitUntilExit() }
            throw DidNotStart(log: String(logged.get().suffix(4000)))
        }
        return RelayProcess(process: process, port: port, logged: logged)
    }

    /// Resident memory of the relay process, in KiB (`VmRSS`).
    public var residentKiB: Int? {
        guard let status = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8) else { return nil }
        guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }) else { return nil }
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "")
    }

    /// Ends the relay with SIGKILL. It is reaped on a thread of its own: the caller (often a
    /// `defer` on one of Swift concurrency's few threads) never blocks.
    public func kill() {
        if process.isRunning { Foundation.kill(process.processIdentifier, SIGKILL) }
        Thread.detachNewThread { [process] in process.waitUntilExit() }
    }

    /// Ends the relay with SIGKILL and returns once it is gone.
    public func killed() async {
        if process.isRunning { Foundation.kill(process.processIdentifier, SIGKILL) }
        _ = try? await process.exited()
    }
}

/// Text one thread writes and another reads.
final class LoggedText: @unchecked Sendable {
    // Safe: every access holds `lock`.
    private let lock = NSLock()
    private var text = ""

    func append(_ value: String) {
        lock.withLock {
            text += value
            if text.utf8.count > 80_000 { text = String(text.suffix(64_000)) }
        }
    }
    func get() -> String { lock.withLock { text } }
}
