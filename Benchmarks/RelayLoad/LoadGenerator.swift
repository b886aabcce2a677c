import DeviceAuth
import Foundation
import Histogram
import NIOCore
import NIOPosix
import RelayTestSupport

/// The relay under load and the clients that load it. Every client runs on one event loop of
/// the load generator's own; the relay runs as its own process, pinned to its own core. With
/// several nodes, they are a fleet on a private PostgreSQL (with its default, durable commit
/// settings), pinned to the same core; PostgreSQL runs where the kernel puts it.
final class LoadGenerator: @unchecked Sendable {
    static let jwtSecret = "load-jwt-secret-load-jwt-secret-000"
    static let masterKey = "load-master-key-load-master-key-000"

    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    var loop: any EventLoop { flusher.loop }
    let flusher: Flusher
    let relays: [RelayProcess]
    var relay: RelayProcess { relays[0] }
    var port: Int { relays[0].port }
    /// Where devices connect (apps connect to node 0).
    let deviceNode: Int
    /// The fleet's database (several nodes only).
    let database: PostgresServer?

    /// Starts the `relay` built beside this binary on `serverCPU` (when given), with the
    /// message-rate, connection-rate and per-address connection limits raised as load needs
    /// (it opens thousands of links from each loopback address); every other limit stays.
    init(relayBinary: String?, serverCPU: Int?, loadCPU: Int?, nodes: Int = 1, sameNode: Bool = false, extraEnvironment: [String: String] = [:]) async throws {
        deviceNode = sameNode ? 0 : nodes - 1
        if let loadCPU { pinThisProcess(to: loadCPU) }
        let binary =
            relayBinary.map { URL(fileURLWithPath: $0) }
            ?? URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("relay")
        var environment = [
            "RELAY_JWT_SECRET": Self.jwtSecret,
            "RELAY_DEVICE_MASTER_KEY": Self.masterKey,
            "RELAY_RATE_BURST": "100000",
            "RELAY_RATE_PER_S": "100000",
            "RELAY_CONNECT_BURST": "100000",
            "RELAY_CONNECT_RATE_PER_MIN": "1000000",
            "RELAY_MAX_CONNECTIONS_PER_IP": "100000",
        ]
        environment.merge(extraEnvironment) { _, new in new }
        if nodes > 1 {
            let database = try await PostgresServer.startPrivate(durable: true)
            self.database = database
            environment["RELAY_DATABASE_URL"] = try await database.createDatabase()
        } else {
            database = nil
        }
        var relays: [RelayProcess] = []
        for _ in 0..<nodes {
            relays.append(try await RelayProcess.start(binary: binary, environment: environment, cpu: serverCPU))
        }
        self.relays = relays
        flusher = Flusher(eventLoop: group.next())
    }

    func shutdown() async {
        for relay in relays { await relay.killed() }
        await database?.shutdown()
        try? await group.shutdownGracefully()
    }

    // MARK: Clients

    /// A device's signed path (`/ws/device?...`), signed now with a fresh nonce.
    static func devicePath(_ deviceID: String) -> String {
        let secret = DeviceSignature.derivedSecret(deviceID: deviceID, masterKey: masterKey)
        let signature = DeviceSignature.sign(
            deviceID: deviceID,
            timestamp: Int(Date().timeIntervalSince1970),
            nonce: DeviceSignature.makeNonce(),
            secret: secret
        )
        return "/ws/device?\(signature.query)"
    }

    /// An app's path with a token for `user` naming `devices`.
    static func appPath(_ user: String, devices: [String]) throws -> String {
        let token = try AppTokenSigner(secret: Array(jwtSecret.utf8)).token(
            userID: user,
            devices: devices,
            now: Date().timeIntervalSince1970,
            lifetime: 3600
        )
        return "/ws/app?token=\(token)"
    }

    /// Opens a socket on `path` from `source` (a 127.0.0.x address); `callbacks` hear its messages.
    func connect(path: String, source: String = "127.0.0.1", node: Int = 0, callbacks: LoadSocket.Callbacks) -> EventLoopFuture<LoadSocket> {
        let socket = LoadSocket(path: path, flusher: flusher, callbacks: callbacks)
        var bootstrap = ClientBootstrap(group: loop)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(socket) }
            }
        if source != "127.0.0.1" {
            // IP_BIND_ADDRESS_NO_PORT: the port is picked at connect, per destination, instead
            // of at bind, where the kernel scans for a port free for every destination.
            bootstrap =
                bootstrap
                .channelOption(ChannelOptions.socket(SocketOptionLevel(IPPROTO_IP), SocketOptionName(24)), value: 1)
                .bind(to: try! SocketAddress(ipAddress: source, port: 0))
        }
        return bootstrap.connect(host: "127.0.0.1", port: relays[node].port).map { _ in socket }
    }

    // MARK: The relay's figures

    /// CPU time the relay processes have used (user + system), in seconds.
    var serverCPUSeconds: Double {
        relays.reduce(0) { total, relay in
            guard let stat = try? String(contentsOfFile: "/proc/\(relay.process.processIdentifier)/stat", encoding: .utf8),
                let close = stat.lastIndex(of: ")")
            else { return total }
            // Fields after the command name: state is field 3; utime and stime are fields 14 and 15.
            let fields = stat[stat.index(after: close)...].split(separator: " ")
            let ticks = (Double(fields[11]) ?? 0) + (Double(fields[12]) ?? 0)
            return total + ticks / Double(sysconf(Int32(_SC_CLK_TCK)))
        }
    }

    /// CPU time the fleet's PostgreSQL has used, in seconds (0 without a fleet).
    var databaseCPUSeconds: Double { database?.cpuSeconds ?? 0 }

    /// The relay's CPU time and the wall time over `during`, or over `seconds` of waiting.
    func measure(seconds: Int, during: (() async -> Void)? = nil) async throws -> (serverCPU: Double, databaseCPU: Double, elapsed: Double) {
        let cpuBefore = serverCPUSeconds
        let databaseBefore = databaseCPUSeconds
        let started = ContinuousClock.now
        if let during { await during() } else { try await Task.sleep(for: .seconds(seconds)) }
        return (serverCPUSeconds - cpuBefore, databaseCPUSeconds - databaseBefore, (ContinuousClock.now - started).seconds)
    }

    /// The relay's resident memory, in KiB.
    var serverRSSKiB: Int { relays.reduce(0) { $0 + ($1.residentKiB ?? 0) } }
}

/// Pins every thread of this process (and those it starts later) to `cpu`, with `taskset -a`.
func pinThisProcess(to cpu: Int) {
    let taskset = Process()
    taskset.executableURL = URL(fileURLWithPath: "/usr/bin/taskset")
    taskset.arguments = ["-a", "-c", "-p", String(cpu), String(getpid())]
    taskset.standardOutput = FileHandle.nullDevice
    do {
        try taskset.run()
        taskset.waitUntilExit()
        if taskset.terminationStatus == 0 { return }
    } catch {}
    print("warning: could not pin the load generator to CPU \(cpu)")
}

/// Nanoseconds on the monotonic clock.
@inline(__always) func now() -> UInt64 { DispatchTime.now().uptimeNanoseconds }

/// A latency histogram in nanoseconds (1 µs to 100 s, 3 significant digits).
struct Latencies {
    var histogram = Histogram<UInt64>(lowestDiscernibleValue: 1_000, highestTrackableValue: 100_000_000_000, numberOfSignificantValueDigits: .three)

    mutating func record(_ nanoseconds: UInt64) { _ = histogram.record(max(nanoseconds, 1_000)) }

    func micro(_ percentile: Double) -> Double { Double(histogram.valueAtPercentile(percentile)) / 1_000 }
    var maxMicro: Double { Double(histogram.max) / 1_000 }
    var count: UInt64 { histogram.totalCount }

    /// p50, p90, p99, p99.9 and max in µs, as JSON fields with `prefix`.
    func fields(_ prefix: String) -> [(String, Any)] {
        [
            ("\(prefix)p50_us", micro(50)), ("\(prefix)p90_us", micro(90)), ("\(prefix)p99_us", micro(99)),
            ("\(prefix)p999_us", micro(99.9)), ("\(prefix)max_us", maxMicro),
        ]
    }
}

/// One scenario's result: a JSON line (fields in order) and a readable summary.
struct Report {
    var scenario: String
    var fields: [(String, Any)] = []
    var summary: [String] = []

    mutating func add(_ name: String, _ value: Any) { fields.append((name, value)) }

    func print() {
        var line = "{\"scenario\":\"\(scenario)\""
        for (name, value) in fields {
            line += ",\"\(name)\":"
            switch value {
            case let value as Double: line += value.isFinite ? String(format: "%.3f", value) : "null"
            case let value as Int: line += String(value)
            case let value as UInt64: line += String(value)
            case let value as Bool: line += value ? "true" : "false"
            default: line += "\"\(value)\""
            }
        }
        Swift.print(line + "}")
        for text in summary { Swift.print(text) }
    }
}

/// Formats a figure for the summary.
func figure(_ value: Double, _ digits: Int = 1) -> String { String(format: "%.\(digits)f", value) }

/// Waits on the event loop for `condition`, checking every `step`, until `timeout`.
func waitFor(_ loop: any EventLoop, timeout: Duration, step: Duration = .milliseconds(20), _ condition: @escaping () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        let done = try? await loop.submit(condition).get()
        if done == true { return true }
        try? await Task.sleep(for: step)
    }
    return false
}
