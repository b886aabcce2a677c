import NIOCore

/// An app and a device in one session, as the relay and setup scenarios drive them.
final class Pair: @unchecked Sendable {
    let index: Int
    let deviceID: String
    let userID: String
    var app: LoadSocket!
    var device: LoadSocket!
    var session = ""

    init(index: Int, prefix: String, deviceID: String? = nil) {
        self.index = index
        self.deviceID = deviceID ?? "\(prefix)-robot-\(index)"
        userID = "\(prefix)-user-\(index)"
    }
}

/// What a socket says before its scenario takes it over: the `hello`, then errors and closes.
struct Opening {
    let hello: EventLoopPromise<Void>

    var callbacks: LoadSocket.Callbacks {
        LoadSocket.Callbacks(
            message: { _, bytes in
                if Wire.type(bytes) == "hello" { hello.succeed(()) }
            },
            closed: { _, why in hello.fail(LoadError("socket closed before hello: \(why)")) }
        )
    }
}

struct LoadError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

extension LoadGenerator {
    /// Connects one socket and waits for its `hello`.
    func open(path: String, source: String = "127.0.0.1", node: Int = 0) -> EventLoopFuture<LoadSocket> {
        let hello = loop.makePromise(of: Void.self)
        return connect(path: path, source: source, node: node, callbacks: Opening(hello: hello).callbacks)
            .flatMap { socket in hello.futureResult.map { socket } }
    }

    /// Connects `count` app/device pairs and opens a session in each: request, credentials,
    /// offer, answer. Returns once every pair's app has its answer.
    func openSessions(count: Int, prefix: String) async throws -> [Pair] {
        let pairs = try await openPairs(count: count, prefix: prefix)
        try await negotiate(pairs)
        return pairs
    }

    /// Connects `count` pairs without sessions, 200 at a time (with several nodes, every app on
    /// the first and every device on the last: each message crosses between nodes).
    func openPairs(count: Int, prefix: String) async throws -> [Pair] {
        let pairs = (0..<count).map { Pair(index: $0, prefix: prefix) }
        for batch in stride(from: 0, to: count, by: 200) {
            var opening: [EventLoopFuture<Void>] = []
            for pair in pairs[batch..<min(count, batch + 200)] {
                let devicePath = Self.devicePath(pair.deviceID)
                let appPath = try Self.appPath(pair.userID, devices: [pair.deviceID])
                opening.append(
                    open(path: devicePath, node: deviceNode).flatMap { device in
                        pair.device = device
                        return self.open(path: appPath, node: 0).map { pair.app = $0 }
                    }
                )
            }
            try await EventLoopFuture.andAllSucceed(opening, on: loop).get()
        }
        return pairs
    }

    /// Opens a session in each pair at once; returns when every app has its answer.
    func negotiate(_ pairs: [Pair]) async throws {
        let answered = try await loop.submit { () -> [EventLoopFuture<Void>] in
            pairs.map { pair in
                let promise = self.loop.makePromise(of: Void.self)
                self.negotiate(pair, done: promise)
                return promise.futureResult
            }
        }.get()
        try await EventLoopFuture.andAllSucceed(answered, on: loop).get()
    }

    /// One session's set-up: the app requests it and offers, the device answers.
    func negotiate(_ pair: Pair, done: EventLoopPromise<Void>) {
        pair.device.callbacks = LoadSocket.Callbacks(
            message: { device, bytes in
                if Wire.type(bytes) == "webrtc_offer", let session = Wire.string(after: Wire.sessionKey, in: bytes) {
                    device.send(Wire.sdp("webrtc_answer", session: session, bytes: 1024).text(now()))
                }
            },
            closed: { _, why in done.fail(LoadError("device closed during set-up: \(why)")) }
        )
        pair.app.callbacks = LoadSocket.Callbacks(
            message: { app, bytes in
                switch Wire.type(bytes) {
                case "webrtc_credentials":
                    pair.session = Wire.string(after: Wire.sessionKey, in: bytes) ?? ""
                    app.send(Wire.sdp("webrtc_offer", session: pair.session, bytes: 1024).text(now()))
                case "webrtc_answer":
                    done.succeed(())
                case "error":
                    done.fail(LoadError("set-up error: \(String(decoding: bytes, as: UTF8.self))"))
                default:
                    break
                }
            },
            closed: { _, why in done.fail(LoadError("app closed during set-up: \(why)")) }
        )
        pair.app.send(#"{"type":"webrtc_request","device_id":"\#(pair.deviceID)"}"#)
    }
}
