import Foundation
import RelayTestSupport

/// A fleet for the soak: a private PostgreSQL, `count` relay nodes on fixed loopback ports and
/// Debian's haproxy in front of them (round robin per connection, no stickiness, a node taken
/// out while its `/readyz` fails). Nodes restart one after another with `restart(_:)`.
final class FleetProcesses: @unchecked Sendable {
    // Safe: `nodes` is read and replaced under `lock` only.
    private let lock = NSLock()
    private var nodes: [RelayProcess]
    let ports: [Int]
    let proxyPort: Int
    let environment: [String: String]
    private let binary: URL
    private let server: PostgresServer
    private let proxy: ChildProcess
    private let directory: URL
    /// Where each node's log goes when it is replaced or the fleet stops (nil: nowhere).
    private let logs: URL?
    private var written = 0

    static func start(count: Int, binary: URL, environment base: [String: String], logs: URL? = nil) async throws -> FleetProcesses {
        let server = try await PostgresServer.startPrivate()
        let url = try await server.createDatabase()
        let environment = base.merging([
            "RELAY_DATABASE_URL": url, "RELAY_NODE_HEARTBEAT_MS": "1000", "RELAY_SHUTDOWN_DRAIN_S": "3", "RELAY_RESUME_GRACE_S": "30",
        ]) { $1 }
        let ports = try (0..<count).map { _ in try freePort() }
        var nodes: [RelayProcess] = []
        for port in ports {
            nodes.append(try await RelayProcess.start(binary: binary, environment: environment.merging(["RELAY_PORT": String(port)]) { $1 }))
        }
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("relay-fleet-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let proxyPort = try freePort()
        let configuration = """
            global
                maxconn 4000
            defaults
                mode tcp
                retries 3
                option redispatch
                timeout connect 2s
                timeout client 1h
                timeout server 1h
            frontend relay
                bind 127.0.0.1:\(proxyPort)
                default_backend nodes
            backend nodes
                balance roundrobin
                option httpchk GET /readyz
                http-check expect status 200
            \(ports.enumerated().map { "    server node\($0.offset) 127.0.0.1:\($0.element) check inter 300 fall 1 rise 1" }.joined(separator: "\n"))

            """
        let file = directory.appendingPathComponent("haproxy.cfg")
        try configuration.write(to: file, atomically: true, encoding: .utf8)
        let proxy = try ChildProcess.run("/usr/sbin/haproxy", ["-db", "-f", file.path], environment: ["PATH": "/usr/bin:/bin"], directory: directory.path)
        // Ready once it accepts connections.
        let deadline = ContinuousClock.now + .seconds(10)
        while (try? RawConnection.open(port: proxyPort)) == nil {
            guard ContinuousClock.now < deadline else { throw RelayProcess.DidNotStart(log: "haproxy did not listen on \(proxyPort)") }
            try await Task.sleep(for: .milliseconds(50))
        }
        return FleetProcesses(
            nodes: nodes,
            ports: ports,
            proxyPort: proxyPort,
            environment: environment,
            binary: binary,
            server: server,
            proxy: proxy,
            directory: directory,
            logs: logs
        )
    }

    private init(
        nodes: [RelayProcess],
        ports: [Int],
        proxyPort: Int,
        environment: [String: String],
        binary: URL,
        server: PostgresServer,
        proxy: ChildProcess,
        directory: URL,
        logs: URL?
    ) {
        self.nodes = nodes
        self.ports = ports
        self.proxyPort = proxyPort
        self.environment = environment
        self.binary = binary
        self.server = server
        self.proxy = proxy
        self.directory = directory
        self.logs = logs
    }

    /// Keeps what a node logged (its last 64 KiB) in `logs`, named by its port and incarnation.
    private func keepLog(of node: RelayProcess) {
        guard let logs else { return }
        let name = lock.withLock { () -> String in
            written += 1
            return "node-\(node.port)-\(written).log"
        }
        try? FileManager.default.createDirectory(at: logs, withIntermediateDirectories: true)
        try? node.recentLog.write(to: logs.appendingPathComponent(name), atomically: true, encoding: .utf8)
    }

    /// Stops node `index` gracefully (SIGTERM: `go_away`, drain, exit), or with `kill` at once
    /// (SIGKILL), and starts a new process on its port; returns how long the old one took to exit.
    func restart(_ index: Int, kill killing: Bool = false) async throws -> Duration {
        let old = lock.withLock { nodes[index] }
        if !old.process.isRunning {
            let said = old.recentLog.split(separator: "\n").filter { $0.contains(" critical ") || $0.contains(" error ") }.suffix(3)
            print("  node \(index) had stopped by itself: \(said.joined(separator: " | "))")
        }
        let started = ContinuousClock.now
        kill(old.process.processIdentifier, killing ? SIGKILL : SIGTERM)
        _ = try await old.process.exited(within: .seconds(60))
        let took = ContinuousClock.now - started
        keepLog(of: old)
        let fresh = try await RelayProcess.start(binary: binary, environment: environment.merging(["RELAY_PORT": String(ports[index])]) { $1 })
        lock.withLock { nodes[index] = fresh }
        return took
    }

    var residentKiB: Int { lock.withLock { nodes.reduce(0) { $0 + ($1.residentKiB ?? 0) } } }

    func stop() async {
        for node in lock.withLock({ nodes }) {
            await node.killed()
            keepLog(of: node)
        }
        kill(proxy.processIdentifier, SIGKILL)
        _ = try? await proxy.exited()
        await server.shutdown()
        try? FileManager.default.removeItem(at: directory)
    }
}

/// A loopback port nobody listens on now.
func freePort() throws -> Int { try PostgresServer.freePort() }
