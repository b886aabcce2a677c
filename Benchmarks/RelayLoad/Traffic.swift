import NIOCore

/// Messages flowing both ways through sessions: at a constant rate (each message stamped with
/// its intended send time, so a stall shows up as latency instead of as fewer messages) or flat
/// out (a fixed number of messages in flight per pair and direction, each one answered by the
/// next). Numbered, each message carries its socket's next `cseq` and the relay's acks are
/// counted. All state lives on the load generator's event loop.
final class Traffic: @unchecked Sendable {
    enum Kind: String { case ice, sdp }

    let pairs: [Pair]
    let loop: any EventLoop
    /// Per pair: what the app sends, what the device sends.
    private let messages: [(app: Stamped, device: Stamped)]
    private(set) var latencies = Latencies()
    private(set) var sent = 0
    private(set) var received = 0
    private(set) var receivedWhileRecording = 0
    private(set) var errors = 0
    private(set) var ackCount = 0
    /// Numbered: the last `cseq` each pair's app and device sent.
    private let numbered: Bool
    private var cseqs: [(app: Int, device: Int)]
    private(set) var closes: [String] = []
    var recording = false
    private var running = false
    private var timer: Scheduled<Void>?
    private var flatOut = false

    init(pairs: [Pair], kind: Kind, sdpBytes: Int, numbered: Bool = false, loop: any EventLoop) {
        self.pairs = pairs
        self.loop = loop
        self.numbered = numbered
        cseqs = Array(repeating: (0, 0), count: pairs.count)
        messages = pairs.map { pair in
            switch kind {
            case .ice: (Wire.ice(session: pair.session), Wire.ice(session: pair.session))
            case .sdp:
                (Wire.sdp("webrtc_offer", session: pair.session, bytes: sdpBytes), Wire.sdp("webrtc_offer", session: pair.session, bytes: sdpBytes))
            }
        }
        for pair in pairs {
            pair.app.callbacks = callbacks(pair, isApp: true)
            pair.device.callbacks = callbacks(pair, isApp: false)
        }
    }

    /// The bytes each message takes as a client sends it (the app's, without the stamp digits).
    var messageBytes: Int { messages.first.map { $0.app.text(now()).utf8.count } ?? 0 }

    private func callbacks(_ pair: Pair, isApp: Bool) -> LoadSocket.Callbacks {
        LoadSocket.Callbacks(
            message: { [self] socket, bytes in
                guard let time = Wire.sendTime(bytes) else {
                    switch Wire.type(bytes) {
                    case "error": errors += 1
                    case "ack": ackCount += 1
                    default: break
                    }
                    return
                }
                received += 1
                if recording {
                    receivedWhileRecording += 1
                    latencies.record(now() &- time)
                }
                // Flat out: the sender of what just arrived sends the next one.
                if flatOut, running { send(pair, fromApp: !isApp) }
            },
            closed: { [self] _, why in closes.append(why) }
        )
    }

    private func send(_ pair: Pair, fromApp: Bool, at time: UInt64 = now()) {
        let socket: LoadSocket = fromApp ? pair.app : pair.device
        let text = fromApp ? messages[pair.index].app.text(time) : messages[pair.index].device.text(time)
        if numbered {
            let cseq: Int
            if fromApp {
                cseqs[pair.index].app += 1
                cseq = cseqs[pair.index].app
            } else {
                cseqs[pair.index].device += 1
                cseq = cseqs[pair.index].device
            }
            socket.send(text.dropLast() + ",\"cseq\":\(cseq)}")
        } else {
            socket.send(text)
        }
        sent += 1
    }

    /// Starts sending `rate` messages per second over all pairs, alternating direction; 0 is
    /// flat out with `window` messages in flight per pair and direction.
    func start(rate: Int, window: Int) {
        loop.execute { [self] in
            running = true
            if rate == 0 {
                flatOut = true
                for pair in pairs {
                    for _ in 0..<window {
                        send(pair, fromApp: true)
                        send(pair, fromApp: false)
                    }
                }
                return
            }
            let interval = 1_000_000_000 / UInt64(rate)
            let start = now()
            var next: UInt64 = 0
            func tick() {
                guard running else { return }
                let current = now()
                // Everything whose intended time has come, stamped with that time.
                while start + next * interval <= current {
                    let pair = pairs[Int(next % UInt64(pairs.count))]
                    send(pair, fromApp: (next / UInt64(pairs.count)) % 2 == 0, at: start + next * interval)
                    next += 1
                }
                let due = start + next * interval
                timer = loop.scheduleTask(deadline: NIODeadline.uptimeNanoseconds(due)) { tick() }
            }
            tick()
        }
    }

    func stop() {
        loop.execute { [self] in
            running = false
            timer?.cancel()
        }
    }

    /// Counts and the histogram start afresh (the warm-up is over).
    func startRecording() async {
        try? await loop.submit { [self] in
            latencies = Latencies()
            receivedWhileRecording = 0
            recording = true
        }.get()
    }

    func stopRecording() async -> (received: Int, latencies: Latencies) {
        (try? await loop.submit { [self] in
            recording = false
            return (receivedWhileRecording, latencies)
        }.get()) ?? (0, Latencies())
    }

    /// After `stop`, waits until every message sent has arrived (or `timeout`); returns the lost.
    func drain(timeout: Duration) async -> Int {
        _ = await waitFor(loop, timeout: timeout) { [self] in received >= sent }
        return (try? await loop.submit { [self] in sent - received }.get()) ?? -1
    }

    /// Acks the relay sent (numbered traffic).
    var acks: Int {
        get async { (try? await loop.submit { [self] in ackCount }.get()) ?? 0 }
    }

    var summary: (errors: Int, closes: [String]) {
        get async { (try? await loop.submit { [self] in (errors, closes) }.get()) ?? (0, []) }
    }
}
