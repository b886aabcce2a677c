/// A private PostgreSQL server for the tests: initdb into a temporary folder, a free loopback port, a database per test.
import Foundation
import Synchronization

/// The tests' own PostgreSQL (Debian's `postgresql` package): one server per test process,
/// started on first use (`initdb` into a temporary folder, a free port on 127.0.0.1, fsync off:
/// these are correctness tests), a fresh database for each test that asks, stopped by its
/// pid when the process exits. As root (CI), it runs as the `postgres` user, as PostgreSQL
/// requires. `stop()` and `start()` take it down and bring it back on the same port (the
/// outage tests).
public final class PostgresServer: Sendable {
    public struct Unavailable: Error, CustomStringConvertible {
        public var description: String
    }

    public let port: Int
    public let directory: String
    private let binaries: String
    private let postmaster = Mutex<ChildProcess?>(nil)

    private static let shared = Mutex<Task<PostgresServer, any Error>?>(nil)
    /// The running postmaster's pid and its folder, for the exit handler (a C function: no captures).
    private nonisolated(unsafe) static var runningPID: Int32 = 0
    private nonisolated(unsafe) static var folder = ""

    /// The test process's server, started on first use.
    public static func running() async throws -> PostgresServer {
        let task = shared.withLock { task in
            if let task { return task }
            let started = Task { try await PostgresServer.start() }
            task = started
            return started
        }
        return try await task.value
    }

    /// The test process's server (the exit handler stops it), not a test's own.
    private let shared: Bool
    /// Writes reach the disk before a commit returns (PostgreSQL's defaults), as a benchmark
    /// wants; the tests' servers skip that.
    private let durable: Bool

    private init(port: Int, directory: String, binaries: String, shared: Bool, durable: Bool) {
        self.port = port
        self.directory = directory
        self.binaries = binaries
        self.shared = shared
        self.durable = durable
    }

    /// A server of the caller's own (for a test that stops and starts it while others run):
    /// `shutdown()` ends it and removes its folder. `durable`: with PostgreSQL's own fsync and
    /// commit settings (for a benchmark).
    public static func startPrivate(durable: Bool = false) async throws -> PostgresServer {
        try await start(shared: false, durable: durable)
    }

    /// CPU seconds the server's processes used so far: the postmaster, its live backends and
    /// those that ended (counted into the postmaster's children time when reaped).
    public var cpuSeconds: Double {
        guard let pid = postmaster.withLock({ $0?.processIdentifier }) else { return 0 }
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        var total = 0.0
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        for entry in entries {
            guard let candidate = Int32(entry), let fields = Self.statFields(candidate) else { continue }
            // Fields after the command: ppid is 4th, utime 14th, stime 15th, cutime 16th, cstime 17th.
            if candidate == pid {
                total += ((Double(fields[11]) ?? 0) + (Double(fields[12]) ?? 0) + (Double(fields[13]) ?? 0) + (Double(fields[14]) ?? 0)) / ticks
            } else if Int32(fields[1]) == pid {
                total += ((Double(fields[11]) ?? 0) + (Double(fields[12]) ?? 0)) / ticks
            }
        }
        return total
    }

    /// `/proc/<pid>/stat` after the command name, split on spaces (state first).
    private static func statFields(_ pid: Int32) -> [Substring]? {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ")
        return fields.count > 15 ? fields : nil
    }

    /// Stops the server and removes its folder.
    public func shutdown() async {
        try? await stop()
        try? FileManager.default.removeItem(atPath: directory)
    }

    private static func start(shared: Bool = true, durable: Bool = false) async throws -> PostgresServer {
        guard let binaries = Self.binaryDirectory() else {
            throw Unavailable(description: "PostgreSQL is not installed (scripts/setup-debian installs Debian's postgresql)")
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("relay-pg-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        if getuid() == 0 {
            guard let user = getpwnam("postgres") else { throw Unavailable(description: "running as root needs a postgres user") }
            chown(directory, user.pointee.pw_uid, user.pointee.pw_gid)
        }
        let initdb = try Self.run(binaries + "/initdb", ["-D", directory + "/data", "-U", "relay", "--auth=trust", "-E", "UTF8", "--no-sync"])
        guard try await initdb.exited(within: .seconds(120)) == 0 else { throw Unavailable(description: "initdb failed") }
        let server = PostgresServer(port: try Self.freePort(), directory: directory, binaries: binaries, shared: shared, durable: durable)
        try await server.start()
        guard shared else { return server }
        folder = directory
        atexit {
            let pid = PostgresServer.runningPID
            if pid > 0 {
                kill(pid, SIGQUIT)
                // Reaped here (nothing else waits for it), so it is gone, not a zombie.
                for _ in 0..<100 where waitpid(pid, nil, WNOHANG) == 0 { usleep(50_000) }
            }
            try? FileManager.default.removeItem(atPath: PostgresServer.folder)
        }
        return server
    }

    /// Starts the server (again) on its port; returns once it accepts connections.
    public func start() async throws {
        let process = try Self.run(
            binaries + "/postgres",
            [
                "-D", directory + "/data", "-p", String(port), "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=" + directory,
                "-c", "max_connections=400", "-c", "shared_buffers=64MB",
            ] + (durable ? [] : ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
        )
        postmaster.withLock { $0 = process }
        if shared { Self.runningPID = process.processIdentifier }
        for _ in 0..<300 {
            if try await Self.run(binaries + "/pg_isready", ["-h", "127.0.0.1", "-p", String(port), "-q"]).exited(within: .seconds(10)) == 0 { return }
            guard process.isRunning else { throw Unavailable(description: "postgres exited at start") }
            try await Task.sleep(for: .milliseconds(100))
        }
        throw Unavailable(description: "postgres did not accept connections within 30 s")
    }

    /// Stops the server (a fast shutdown: sessions are ended, as `pg_ctl stop -m fast` does).
    public func stop() async throws {
        guard let process = postmaster.withLock({ process in
            defer { process = nil }
            return process
        }) else { return }
        kill(process.processIdentifier, SIGINT)
        _ = try await process.exited(within: .seconds(30))
        if shared { Self.runningPID = 0 }
    }

    /// Freezes the server: SIGSTOP to the postmaster (first, so it forks no one new) and every
    /// backend. Connections stay open and nothing answers, as when its host hangs or the
    /// network drops every packet. `thaw()` lets it go on.
    public func freeze() {
        guard let pid = postmaster.withLock({ $0?.processIdentifier }) else { return }
        kill(pid, SIGSTOP)
        for child in Self.children(of: pid) { kill(child, SIGSTOP) }
    }

    public func thaw() {
        guard let pid = postmaster.withLock({ $0?.processIdentifier }) else { return }
        for child in Self.children(of: pid) { kill(child, SIGCONT) }
        kill(pid, SIGCONT)
    }

    private static func children(of pid: Int32) -> [Int32] {
        let text = (try? String(contentsOfFile: "/proc/\(pid)/task/\(pid)/children", encoding: .utf8)) ?? ""
        return text.split(separator: " ").compactMap { Int32($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    /// A fresh, empty database; its URL.
    public func createDatabase() async throws -> String {
        let name = "relay_test_" + UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "")
        let created = try Self.run(binaries + "/createdb", ["-h", "127.0.0.1", "-p", String(port), "-U", "relay", name])
        guard try await created.exited(within: .seconds(30)) == 0 else { throw Unavailable(description: "createdb failed") }
        return url(database: name)
    }

    /// The URL of `database` on this server.
    public func url(database: String) -> String {
        "postgres://relay@127.0.0.1:\(port)/\(database)"
    }

    /// Runs one SQL statement with psql (for failure injection: `pg_terminate_backend`).
    @discardableResult
    public func sql(_ statement: String, database: String) async throws -> String {
        let psql = try ChildProcess.run(
            binaries + "/psql",
            ["-h", "127.0.0.1", "-p", String(port), "-U", "relay", "-d", database, "-At", "-c", statement],
            environment: ["PATH": "/usr/bin:/bin"],
            standardOutput: .pipe
        )
        let output = psql.standardOutput!.readDataToEndOfFile()
        guard try await psql.exited(within: .seconds(30)) == 0 else { throw Unavailable(description: "psql failed: \(statement)") }
        return String(decoding: output, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
    }

    /// Runs a PostgreSQL program, as the `postgres` user when this process is root.
    private static func run(_ program: String, _ arguments: [String]) throws -> ChildProcess {
        let environment = ["PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"]
        if getuid() == 0 {
            return try ChildProcess.run(
                "/usr/bin/setpriv",
                ["--reuid=postgres", "--regid=postgres", "--clear-groups", program] + arguments,
                environment: environment,
                directory: "/tmp"
            )
        }
        return try ChildProcess.run(program, arguments, environment: environment, directory: "/tmp")
    }

    private static func binaryDirectory() -> String? {
        let root = "/usr/lib/postgresql"
        let versions = (try? FileManager.default.contentsOfDirectory(atPath: root))?.compactMap(Int.init).sorted() ?? []
        return versions.last.map { "\(root)/\($0)/bin" }
    }

    /// A loopback port nothing listens on now.
    public static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard bound == 0 else { throw Unavailable(description: "no free port") }
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        withUnsafeMutablePointer(to: &address) { pointer in
            _ = pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
