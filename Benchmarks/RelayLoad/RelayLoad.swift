import ArgumentParser
import Foundation
import NIOCore

/// Loads a real `relay` process on loopback the way a fleet would, and prints one JSON line and
/// a readable summary per scenario. See BENCHMARKS.md.
@main
struct RelayLoad: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relay-load",
        abstract: "Load scenarios against a real relay: idle, relay, setup, slow.",
        subcommands: [Idle.self, RelayTraffic.self, SetUp.self, Slow.self]
    )
}

/// Where the relay runs and where the load generator runs.
struct Placement: ParsableArguments {
    @Option(help: "The relay binary (default: the one built beside relay-load).") var relay: String?
    @Option(help: "CPU the relay is pinned to (-1: not pinned).") var serverCPU = 0
    @Option(help: "CPU the load generator is pinned to (-1: not pinned).") var loadCPU = 1
    @Option(help: "Relay nodes (more than 1: a fleet on a private PostgreSQL; apps on the first node, devices on the last).") var nodes = 1
    @Flag(help: "With a fleet: every app and device on the first node (the fleet's store, no message between nodes).") var sameNode = false

    /// Starts the relay, runs `body` against it, and ends the relay whatever happens.
    func run(_ environment: [String: String] = [:], _ body: (LoadGenerator) async throws -> Void) async throws {
        let load = try await LoadGenerator(
            relayBinary: relay,
            serverCPU: serverCPU < 0 ? nil : serverCPU,
            loadCPU: loadCPU < 0 ? nil : loadCPU,
            nodes: nodes,
            sameNode: sameNode,
            extraEnvironment: environment
        )
        do {
            try await body(load)
        } catch {
            await load.shutdown()
            throw error
        }
        await load.shutdown()
    }
}

// MARK: idle

struct Idle: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Hold N device links; connect rate and the relay's memory per link.")

    @OptionGroup var placement: Placement
    @Option(help: "Device links to open.") var links = 19_000
    @Option(help: "Upgrades in flight at once.") var concurrency = 256
    @Option(help: "Links per 127.0.0.x source address (the ephemeral port range holds ~28k).") var perSource = 10_000
    @Option(help: "Seconds to hold the links once open.") var hold = 5

    func run() async throws {
        try await placement.run { try await run(load: $0) }
    }

    func run(load: LoadGenerator) async throws {
        try await Task.sleep(for: .seconds(1))
        let rssBefore = load.serverRSSKiB
        let paths = (0..<links).map { LoadGenerator.devicePath("idle-robot-\($0)") }
        let cpuBefore = load.serverCPUSeconds
        let started = ContinuousClock.now
        var opened: [LoadSocket] = []
        var failures = 0
        var failure: String?
        // A window of upgrades in flight: each hello (or failure) lets the next one start.
        try await withThrowingTaskGroup(of: Result<LoadSocket, any Error>.self) { group in
            var next = 0
            func startOne() {
                let index = next
                next += 1
                let source = "127.0.0.\(2 + index / perSource)"
                let future = load.open(path: paths[index], source: source)
                group.addTask { do { return .success(try await future.get()) } catch { return .failure(error) } }
            }
            while next < min(concurrency, links) { startOne() }
            while let result = try await group.next() {
                switch result {
                case .success(let socket): opened.append(socket)
                case .failure(let error):
                    failures += 1
                    failure = failure ?? "\(error)"
                }
                if next < links { startOne() }
            }
        }
        let connectSeconds = (ContinuousClock.now - started).seconds
        let connectCPU = load.serverCPUSeconds - cpuBefore
        try await Task.sleep(for: .seconds(hold))
        let rssAfter = load.serverRSSKiB
        let stillOpen = try await load.loop.submit { opened.filter { $0.phase == .open }.count }.get()
        let perLink = opened.isEmpty ? 0 : Double(rssAfter - rssBefore) * 1024 / Double(opened.count)

        var report = Report(scenario: "idle")
        report.add("links", links)
        report.add("opened", opened.count)
        report.add("failures", failures)
        report.add("held_after_s", stillOpen)
        report.add("connect_per_s", Double(opened.count) / connectSeconds)
        report.add("server_cpu_us_per_connect", connectCPU * 1e6 / Double(max(opened.count, 1)))
        report.add("rss_before_kib", rssBefore)
        report.add("rss_after_kib", rssAfter)
        report.add("rss_bytes_per_link", perLink)
        report.summary = [
            "idle: \(opened.count) of \(links) device links opened (\(failures) failed\(failure.map { ", first: \($0)" } ?? "")), \(stillOpen) still open after \(hold) s",
            "  connect: \(figure(Double(opened.count) / connectSeconds, 0)) upgrades/s (\(concurrency) in flight), relay CPU \(figure(connectCPU * 1e6 / Double(max(opened.count, 1)))) µs per upgrade",
            "  relay RSS: \(rssBefore / 1024) MiB before, \(rssAfter / 1024) MiB after: \(figure(perLink / 1024, 2)) KiB per link",
        ]
        report.print()
        try await load.loop.submit { opened.forEach { $0.close() } }.get()
    }
}

// MARK: relay

struct TrafficOptions: ParsableArguments {
    @Option(help: "App/device pairs in sessions.") var pairs = 100
    @Option(help: "Messages per second over all pairs (0: flat out).") var rate = 0
    @Option(help: "Flat out: messages in flight per pair and direction.") var window = 4
    @Option(help: "ice (a ~200-byte candidate) or sdp (an offer).") var kind = "ice"
    @Option(help: "SDP bytes per offer (kind sdp).") var sdpBytes = 4096
    @Option(help: "Seconds measured.") var seconds = 10
    @Option(help: "Seconds of warm-up before measuring.") var warmup = 2
    @Flag(help: "Number every message with cseq, as a client sending reliably does (contract §11): the relay acks them.") var cseq = false

    var trafficKind: Traffic.Kind { Traffic.Kind(rawValue: kind) ?? .ice }
}

/// One measured window of traffic: the relay's CPU and the latencies of what arrived.
struct Window {
    var seconds: Double
    var delivered: Int
    var serverCPU: Double
    /// PostgreSQL's CPU (a fleet only).
    var databaseCPU: Double
    var latencies: Latencies

    var perSecond: Double { Double(delivered) / seconds }
    var cpuMicrosPerMessage: Double { serverCPU * 1e6 / Double(max(delivered, 1)) }
    var databaseMicrosPerMessage: Double { databaseCPU * 1e6 / Double(max(delivered, 1)) }

    static func measure(_ traffic: Traffic, load: LoadGenerator, seconds: Int, during: (() async -> Void)? = nil) async throws -> Window {
        await traffic.startRecording()
        let (cpu, databaseCPU, elapsed) = try await load.measure(seconds: seconds, during: during)
        let (delivered, latencies) = await traffic.stopRecording()
        return Window(seconds: elapsed, delivered: delivered, serverCPU: cpu, databaseCPU: databaseCPU, latencies: latencies)
    }
}

struct RelayTraffic: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "relay",
        abstract: "Pairs in sessions exchanging ICE candidates or SDP; delivered/s, latency, relay CPU per message."
    )

    @OptionGroup var placement: Placement
    @OptionGroup var options: TrafficOptions

    func run() async throws {
        try await placement.run { try await run(load: $0) }
    }

    func run(load: LoadGenerator) async throws {
        let pairs = try await load.openSessions(count: options.pairs, prefix: "relay")
        let traffic = try await load.loop.submit {
            Traffic(pairs: pairs, kind: options.trafficKind, sdpBytes: options.sdpBytes, numbered: options.cseq, loop: load.loop)
        }.get()
        traffic.start(rate: options.rate, window: options.window)
        try await Task.sleep(for: .seconds(options.warmup))
        let window = try await Window.measure(traffic, load: load, seconds: options.seconds)
        traffic.stop()
        let lost = await traffic.drain(timeout: .seconds(5))
        let (errors, closes) = await traffic.summary

        var report = Report(scenario: "relay")
        report.add("kind", options.kind)
        report.add("message_bytes", traffic.messageBytes)
        report.add("pairs", options.pairs)
        report.add("rate", options.rate)
        report.add("seconds", window.seconds)
        report.add("delivered", window.delivered)
        report.add("delivered_per_s", window.perSecond)
        report.add("server_cpu_s", window.serverCPU)
        report.add("server_cpu_us_per_msg", window.cpuMicrosPerMessage)
        report.add("nodes", placement.nodes)
        if placement.nodes > 1 { report.add("database_cpu_us_per_msg", window.databaseMicrosPerMessage) }
        report.fields += window.latencies.fields("")
        report.add("lost", lost)
        report.add("cseq", options.cseq)
        report.add("acks", await traffic.acks)
        report.add("errors", errors)
        report.add("closed", closes.count)
        let mode = options.rate == 0 ? "flat out, \(options.window) in flight per pair and direction" : "\(options.rate)/s offered"
        report.summary = [
            "relay: \(options.pairs) pairs, \(options.kind) messages of \(traffic.messageBytes) bytes, \(mode)\(options.cseq ? ", numbered with cseq" : "")",
            "  delivered \(figure(window.perSecond, 0)) messages/s over \(figure(window.seconds)) s; relay CPU \(figure(window.cpuMicrosPerMessage, 2)) µs per message (\(figure(window.serverCPU / window.seconds * 100, 0))% of a core)"
                + (placement.nodes > 1
                    ? " over \(placement.nodes) nodes; PostgreSQL CPU \(figure(window.databaseMicrosPerMessage, 2)) µs per message (\(figure(window.databaseCPU / window.seconds * 100, 0))% of a core)" : ""),
            "  one-way latency µs: p50 \(figure(window.latencies.micro(50))) p90 \(figure(window.latencies.micro(90))) p99 \(figure(window.latencies.micro(99))) p99.9 \(figure(window.latencies.micro(99.9))) max \(figure(window.latencies.maxMicro))",
            "  lost \(lost), errors \(errors), sockets closed \(closes.count)\(closes.first.map { " (\($0))" } ?? "")"
                + (options.cseq ? ", acks received \(await traffic.acks)" : ""),
        ]
        report.print()
    }
}

extension Duration {
    var seconds: Double { Double(components.seconds) + Double(components.attoseconds) / 1e18 }
}
