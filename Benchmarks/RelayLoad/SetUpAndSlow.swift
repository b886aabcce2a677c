import ArgumentParser
import Foundation
import NIOCore

// MARK: setup

/// Whole sessions one after another on each of C app/device pairs: request, credentials, a
/// ~3 KB offer, a ~3 KB answer, 4 candidates each way, close. Set-up latency runs from the
/// request to the app holding the answer and all 4 of the device's candidates.
final class SessionChurn: @unchecked Sendable {
    let pairs: [Pair]
    let loop: any EventLoop
    private let lines = Wire.sdpLines(3072)
    private(set) var latencies = Latencies()
    private(set) var completed = 0
    private(set) var errors: [String] = []
    private(set) var closes: [String] = []
    var running = true
    private var requestedAt: [UInt64]
    private var answered: [Bool]
    private var candidates: [Int]
    private var inFlight = 0
    private var drained: EventLoopPromise<Void>?

    init(pairs: [Pair], loop: any EventLoop) {
        self.pairs = pairs
        self.loop = loop
        requestedAt = Array(repeating: 0, count: pairs.count)
        answered = Array(repeating: false, count: pairs.count)
        candidates = Array(repeating: 0, count: pairs.count)
        for pair in pairs {
            pair.app.callbacks = LoadSocket.Callbacks(
                message: { [self] _, bytes in app(pair, bytes) },
                closed: { [self] _, why in closes.append(why) }
            )
            pair.device.callbacks = LoadSocket.Callbacks(
                message: { [self] _, bytes in device(pair, bytes) },
                closed: { [self] _, why in closes.append(why) }
            )
        }
    }

    func start() { loop.execute { [self] in pairs.forEach(request) } }

    private func request(_ pair: Pair) {
        guard running else {
            if inFlight == 0 { drained?.succeed(()) }
            return
        }
        inFlight += 1
        requestedAt[pair.index] = now()
        answered[pair.index] = false
        candidates[pair.index] = 0
        pair.app.send(#"{"type":"webrtc_request","device_id":"\#(pair.deviceID)"}"#)
    }

    private func app(_ pair: Pair, _ bytes: UnsafeRawBufferPointer) {
        switch Wire.type(bytes) {
        case "webrtc_credentials":
            pair.session = Wire.string(after: Wire.sessionKey, in: bytes) ?? ""
            pair.app.send(Wire.sdp("webrtc_offer", session: pair.session, lines: lines).text(now()))
        case "webrtc_answer":
            answered[pair.index] = true
            for _ in 0..<4 { pair.app.send(Wire.ice(session: pair.session).text(now())) }
            setUpIfComplete(pair)
        case "webrtc_ice":
            candidates[pair.index] += 1
            setUpIfComplete(pair)
        case "webrtc_close":
            completed += 1
            inFlight -= 1
            request(pair)
        case "error":
            errors.append(String(decoding: bytes, as: UTF8.self))
        default:
            break
        }
    }

    private func setUpIfComplete(_ pair: Pair) {
        guard answered[pair.index], candidates[pair.index] == 4 else { return }
        latencies.record(now() &- requestedAt[pair.index])
        pair.app.send(#"{"type":"webrtc_close","session_id":"\#(pair.session)","reason":"normal"}"#)
    }

    private func device(_ pair: Pair, _ bytes: UnsafeRawBufferPointer) {
        switch Wire.type(bytes) {
        case "webrtc_offer":
            let session = Wire.string(after: Wire.sessionKey, in: bytes) ?? ""
            pair.device.send(Wire.sdp("webrtc_answer", session: session, lines: lines).text(now()))
            for _ in 0..<4 { pair.device.send(Wire.ice(session: session).text(now())) }
        case "error":
            errors.append(String(decoding: bytes, as: UTF8.self))
        default:
            break
        }
    }

    func startRecording() async {
        try? await loop.submit { [self] in
            latencies = Latencies()
            completed = 0
        }.get()
    }

    func stopRecording() async -> (completed: Int, latencies: Latencies) {
        (try? await loop.submit { [self] in (completed, latencies) }.get()) ?? (0, Latencies())
    }

    /// Stops starting sessions and waits for those under way to close.
    func stop() async throws {
        let drained = try await loop.submit { [self] () -> EventLoopFuture<Void> in
            running = false
            let promise = loop.makePromise(of: Void.self)
            self.drained = promise
            if inFlight == 0 { promise.succeed(()) }
            return promise.futureResult
        }.get()
        try await drained.get()
    }

    var summary: (errors: [String], closes: [String]) {
        get async { (try? await loop.submit { [self] in (errors, closes) }.get()) ?? ([], []) }
    }
}

struct SetUp: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "setup",
        abstract: "Whole sessions on C pairs at once; sessions/s, set-up latency, relay CPU per session."
    )

    @OptionGroup var placement: Placement
    @Option(help: "Pairs setting up sessions at once.") var concurrent = 50
    @Option(help: "Seconds measured.") var seconds = 10
    @Option(help: "Seconds of warm-up before measuring.") var warmup = 2

    func run() async throws {
        try await placement.run { try await run(load: $0) }
    }

    func run(load: LoadGenerator) async throws {
        let pairs = try await load.openPairs(count: concurrent, prefix: "setup")
        let churn = try await load.loop.submit { SessionChurn(pairs: pairs, loop: load.loop) }.get()
        churn.start()
        try await Task.sleep(for: .seconds(warmup))
        await churn.startRecording()
        let (cpu, _, elapsed) = try await load.measure(seconds: seconds)
        let (completed, latencies) = await churn.stopRecording()
        try await churn.stop()
        let (errors, closes) = await churn.summary

        var report = Report(scenario: "setup")
        report.add("concurrent", concurrent)
        report.add("seconds", elapsed)
        report.add("sessions", completed)
        report.add("sessions_per_s", Double(completed) / elapsed)
        report.add("server_cpu_s", cpu)
        report.add("server_cpu_us_per_session", cpu * 1e6 / Double(max(completed, 1)))
        report.fields += latencies.fields("setup_")
        report.add("errors", errors.count)
        report.add("closed", closes.count)
        report.summary = [
            "setup: \(concurrent) pairs each running whole sessions (request, credentials, 3 KB offer, 3 KB answer, 4+4 candidates, close)",
            "  \(figure(Double(completed) / elapsed, 0)) sessions/s over \(figure(elapsed)) s; relay CPU \(figure(cpu * 1e6 / Double(max(completed, 1)))) µs per session (\(figure(cpu / elapsed * 100, 0))% of a core)",
            "  set-up latency ms: p50 \(figure(latencies.micro(50) / 1000, 2)) p99 \(figure(latencies.micro(99) / 1000, 2)) max \(figure(latencies.maxMicro / 1000, 2))",
            "  errors \(errors.count)\(errors.first.map { " (\($0))" } ?? ""), sockets closed \(closes.count)",
        ]
        report.print()
    }
}

// MARK: slow

struct Slow: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A device that stops reading while apps flood it: the relay's memory, and the other pairs' p99 beside an undisturbed run."
    )

    @OptionGroup var placement: Placement
    @OptionGroup var options: TrafficOptions
    @Option(help: "Apps flooding the slow device (each in a session with it; the contract allows 4 per device).") var flooders = 4
    @Option(help: "Offers per second the flooders send in all.") var floodRate = 10_000

    func run() async throws {
        try await placement.run { try await run(load: $0) }
    }

    func run(load: LoadGenerator) async throws {
        let rate = options.rate == 0 ? 5000 : options.rate
        let pairs = try await load.openSessions(count: options.pairs, prefix: "others")
        // The slow device and its flooders: one device, `flooders` apps with a session each.
        let slow = try await load.openFlooders(count: flooders)
        let traffic = try await load.loop.submit {
            Traffic(pairs: pairs, kind: options.trafficKind, sdpBytes: options.sdpBytes, numbered: options.cseq, loop: load.loop)
        }.get()
        traffic.start(rate: rate, window: 0)
        try await Task.sleep(for: .seconds(options.warmup))
        let rssBefore = load.serverRSSKiB
        let undisturbed = try await Window.measure(traffic, load: load, seconds: options.seconds)

        try await load.loop.submit { slow.device.setReading(false) }.get()
        slow.start(rate: floodRate)
        var peak = rssBefore
        let flooded = try await Window.measure(traffic, load: load, seconds: options.seconds) {
            let deadline = ContinuousClock.now + .seconds(options.seconds)
            while ContinuousClock.now < deadline {
                peak = max(peak, load.serverRSSKiB)
                try? await Task.sleep(for: .milliseconds(100))
            }
        }
        let floodSent = await slow.stop()
        traffic.stop()
        let rssAfter = load.serverRSSKiB
        try await load.loop.submit { slow.device.setReading(true) }.get()
        let lost = await traffic.drain(timeout: .seconds(5))
        let dropped = await waitFor(load.loop, timeout: .seconds(10)) { slow.device.phase == .closed }
        let (errors, closes) = await traffic.summary
        let ratio = flooded.latencies.micro(99) / undisturbed.latencies.micro(99)

        var report = Report(scenario: "slow")
        report.add("pairs", options.pairs)
        report.add("rate", rate)
        report.add("flooders", flooders)
        report.add("flood_offers", floodSent)
        report.add("flood_mib", Double(floodSent * slow.offerBytes) / 1_048_576)
        report.add("slow_link_dropped", dropped)
        report.add("rss_before_kib", rssBefore)
        report.add("rss_peak_kib", peak)
        report.add("rss_after_kib", rssAfter)
        report.fields += undisturbed.latencies.fields("undisturbed_")
        report.fields += flooded.latencies.fields("flooded_")
        report.add("p99_ratio", ratio)
        report.add("lost", lost)
        report.add("errors", errors)
        report.add("closed", closes.count)
        report.summary = [
            "slow: \(options.pairs) pairs at \(rate) \(options.kind) messages/s; then one device stops reading while \(flooders) apps send it \(floodRate) offers/s of \(slow.offerBytes) bytes",
            "  flood: \(floodSent) offers (\(Int(Double(floodSent * slow.offerBytes) / 1_048_576)) MiB); the slow device's socket was \(dropped ? "dropped by the relay" : "never dropped")",
            "  relay RSS: \(rssBefore / 1024) MiB before, peak \(peak / 1024) MiB while flooded, \(rssAfter / 1024) MiB after",
            "  others' p99 µs: \(figure(undisturbed.latencies.micro(99))) undisturbed, \(figure(flooded.latencies.micro(99))) while flooded (\(figure(ratio, 2))×); p50 \(figure(undisturbed.latencies.micro(50))) / \(figure(flooded.latencies.micro(50)))",
            "  others lost \(lost), errors \(errors), sockets closed \(closes.count)",
        ]
        report.print()
    }
}

/// A device that will stop reading, and apps in sessions with it that flood it with offers.
final class Flood: @unchecked Sendable {
    let device: LoadSocket
    let apps: [Pair]
    let loop: any EventLoop
    let offerBytes: Int
    private let offers: [Stamped]
    private var timer: RepeatedTask?
    private var sent = 0

    init(device: LoadSocket, apps: [Pair], loop: any EventLoop) {
        self.device = device
        self.apps = apps
        self.loop = loop
        offers = apps.map { Wire.sdp("webrtc_offer", session: $0.session, bytes: 4096) }
        offerBytes = offers.first?.text(now()).utf8.count ?? 0
    }

    /// Sends `rate` offers per second, a millisecond's worth at a time, round robin.
    func start(rate: Int) {
        loop.execute { [self] in
            var owed = 0.0
            timer = loop.scheduleRepeatedTask(initialDelay: .zero, delay: .milliseconds(1)) { [self] _ in
                owed += Double(rate) / 1000
                while owed >= 1 {
                    let index = sent % apps.count
                    apps[index].app.send(offers[index].text(now()))
                    sent += 1
                    owed -= 1
                }
            }
        }
    }

    func stop() async -> Int {
        (try? await loop.submit { [self] in
            timer?.cancel()
            return sent
        }.get()) ?? 0
    }
}

extension LoadGenerator {
    /// One device in sessions with `count` apps (the flood's targets and sources).
    func openFlooders(count: Int) async throws -> Flood {
        let deviceID = "slow-robot"
        let device = try await open(path: Self.devicePath(deviceID)).get()
        var apps: [Pair] = []
        for index in 0..<count {
            let pair = Pair(index: index, prefix: "flood", deviceID: deviceID)
            pair.device = device
            pair.app = try await open(path: Self.appPath(pair.userID, devices: [deviceID])).get()
            apps.append(pair)
        }
        // One at a time: every set-up replaces the device's callbacks.
        for pair in apps { try await negotiate([pair]) }
        return try await loop.submit { Flood(device: device, apps: apps, loop: self.loop) }.get()
    }
}
