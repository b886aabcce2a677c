/// The Swift client library against the real `relay serve` on loopback (no stand-in of the relay).
import DeviceAuth
import Foundation
import Logging
@testable import RelayClient
import RelayCore
import RelayTestSupport
import Synchronization
import Testing

@Suite(.timeLimit(.minutes(2)))
struct RelayClientTests {
    @Test func anAppAndADeviceHaveAWholeSession() async throws {
        try await ClientRelay.run { relay in
            let device = try relay.device("robot-1")
            let app = try relay.app()
            try await device.start()
            try await app.start()
            #expect(await device.hello?.resumed == false)

            let credentials = try await app.request(device: "robot-1")
            #expect(credentials.deviceID == "robot-1" && !credentials.iceServers.servers.isEmpty)
            #expect(credentials.iceServers.ttl == 3600 && credentials.iceServers.expiresAt?.hasSuffix("Z") == true)
            let request = try await device.next { if case .sessionRequested(let request) = $0 { request } else { nil } }
            #expect(request.sessionID == credentials.sessionID && request.userID == "alice")
            let session = request.sessionID

            await device.sendOffer(session: session, sdp: "v=0 offer")
            #expect(try await app.next { if case .offer(let offer) = $0 { offer.sdp } else { nil } } == "v=0 offer")
            await app.sendAnswer(session: session, sdp: "v=0 answer")
            #expect(try await device.next { if case .answer(let answer) = $0 { answer.sdp } else { nil } } == "v=0 answer")
            let candidate = ICECandidate(candidate: "candidate:1 1 udp 1 127.0.0.1 9 typ host", sdpMid: "0", sdpMLineIndex: 0)
            await app.sendICE(session: session, candidate: candidate)
            await app.sendICE(session: session, candidate: nil)
            #expect(try await device.next { if case .ice(let ice) = $0 { ice } else { nil } } == ICECandidates(sessionID: session, candidates: [candidate], complete: false))
            #expect(try await device.next { if case .ice(let ice) = $0 { ice } else { nil } } == ICECandidates(sessionID: session, candidates: [], complete: true))

            await app.closeSession(session)
            for client in [app, device] {
                let closed = try await client.next { if case .sessionClosed(let id, _, let by) = $0 { (id, by) } else { nil } }
                #expect(closed.0 == session && closed.1 == "app")
            }
            // Everything both sent is acked by the relay.
            await app.waitUntilAcknowledged()
            await device.waitUntilAcknowledged()
            let left = (await app.unacknowledged, await device.unacknowledged)
            #expect(left == (0, 0))
            await app.close()
            await device.close()
        }
    }

    @Test func aDroppedSocketResumesTheLinkAndNothingIsLostOrDoubled() async throws {
        try await ClientRelay.run { relay in
            let device = try relay.device("robot-1")
            let app = try relay.app()
            try await device.start()
            try await app.start()
            let session = try await app.request(device: "robot-1").sessionID
            let link = try #require(await app.hello?.linkID)
            for number in 1...50 {
                await app.sendICE(session: session, candidate: ICECandidate(candidate: "candidate:\(number)"))
                // The network drops the app's socket mid-stream.
                if number == 25 { await app.dropConnection() }
            }
            // The device gets every candidate once, in order, and hears its peer go and come back.
            var received: [Int] = []
            var statuses: [String] = []
            while received.count < 50 || statuses.count < 2 {
                switch try await device.next({ $0 }) {
                case .ice(let ice): received += ice.candidates.compactMap { Int($0.candidate.split(separator: ":")[1]) }
                case .peerStatus(_, let status): statuses.append(status)
                default: break
                }
            }
            #expect(received == Array(1...50))
            #expect(statuses == ["reconnecting", "connected"])
            let resumed = try await app.next { if case .connected(let hello) = $0, hello.resumed { hello } else { nil } }
            let connects = await app.connects
            #expect(resumed.linkID == link && connects == 2)
        }
    }

    @Test func aBurstBeyondTheRelaysLimitIsPacedAndNothingIsRefused() async throws {
        // 100 messages at once, twice the relay's burst of 50 per link: sent as the limit allows.
        try await ClientRelay.run { relay in
            let device = try relay.device("robot-1")
            let app = try relay.app()
            try await device.start()
            try await app.start()
            let session = try await app.request(device: "robot-1").sessionID
            for number in 1...100 {
                await app.sendICE(session: session, candidate: ICECandidate(candidate: "candidate:\(number)"))
            }
            var received: [Int] = []
            while received.count < 100 {
                let ice = try await device.next { if case .ice(let ice) = $0 { ice } else { nil } }
                received += ice.candidates.compactMap { Int($0.candidate.split(separator: ":")[1]) }
            }
            #expect(received == Array(1...100))
            await app.waitUntilAcknowledged()
            await app.close()
            var errors: [RelayError] = []
            for try await event in app.events {
                if case .error(let error) = event { errors.append(error) }
            }
            #expect(errors.isEmpty)
        }
    }

    @Test func aDeviceWithAWrongSecretStopsWithTheReasonInsteadOfRetrying() async throws {
        try await ClientRelay.run { relay in
            let device = try relay.device("robot-1", secret: "not-the-secret")
            await #expect(throws: RelayClientError.self) { try await device.start() }
            do {
                try await device.start()
            } catch let RelayClientError.refused(status, detail) {
                #expect(status == 401 && detail.contains("signature"))
            }
            #expect(await device.connects == 0)
        }
    }

    @Test func aRevokedDeviceStopsWith403AndALiveOneIsDisconnectedForGood() async throws {
        try await ClientRelay.run { relay in
            let secret = try await relay.command("device", "add", "robot-2", "--owner", "alice").split(separator: "\n").last.map(String.init) ?? ""
            let device = try relay.device("robot-2", secret: secret)
            try await device.start()
            _ = try await relay.command("device", "revoke", "robot-2")
            // The relay drops the revoked device's socket; its reconnect is refused and it stops.
            let ending = await Self.ending(of: device)
            #expect(ending == .refused(status: 403, detail: ending.detail))
            #expect(!ending.detail.isEmpty)
        }
    }

    @Test func anAppTokenIsRefreshedBeforeItExpires() async throws {
        // No leeway: the relay closes an app's socket at `exp` without a fresh token (4001).
        try await ClientRelay.run(["RELAY_JWT_LEEWAY_S": "0"]) { relay in
            let (mints, minted) = AsyncStream.makeStream(of: Int.self)
            let count = Mutex(0)
            var options = RelayClient.Options()
            options.tokenRefreshMargin = .seconds(2)
            let app = try relay.app(options: options) {
                minted.yield(count.withLock { $0 += 1; return $0 })
                return try relay.appToken(lifetime: 4)
            }
            try await app.start()
            let link = try #require(await app.hello?.linkID)
            // Wait until the fourth token is minted (at 6 s), well past the first one's `exp` (4 s).
            for await number in mints where number >= 4 { break }
            // Still the same socket, never closed: the token went again with `auth` in time.
            await app.send("ping", ["request_id": .string("after")])
            let pong = try await app.next { if case .other("pong", let fields) = $0 { fields["request_id"] } else { nil } }
            #expect(pong == .string("after"))
            let (connects, linkNow) = (await app.connects, await app.hello?.linkID)
            #expect(connects == 1 && linkNow == link)
        }
    }

    @Test func goAwayIsFollowedAndTheLinkResumesOnTheNextProcess() async throws {
        try await ClientRelay.run(["RELAY_SHUTDOWN_DRAIN_S": "1"]) { relay in
            let app = try relay.app()
            try await app.start()
            let link = try #require(await app.hello?.linkID)
            // SIGTERM: the relay says go_away; the client leaves, and comes back to the next
            // process on the same store and port.
            try await relay.restarted {
                let goAway = try await app.next { if case .goAway(let after, _) = $0 { after } else { nil } }
                #expect(goAway >= 0)
            }
            let resumed = try await app.next { if case .connected(let hello) = $0, hello.resumed { hello } else { nil } }
            #expect(resumed.linkID == link)
        }
    }

    @Test func retryAfterIsHonouredWhenTheRelayRefusesForAWhile() async throws {
        // One connection per 3 s per device: the resume right after a drop is refused (429,
        // Retry-After: 3). The client waits that long once, instead of knocking again and again.
        try await ClientRelay.run(["RELAY_CONNECT_BURST": "1", "RELAY_CONNECT_RATE_PER_MIN": "20"]) { relay in
            let log = LogLines()
            var options = RelayClient.Options()
            options.logger = Logger(label: "client") { _ in log }
            let device = try relay.device("robot-1", options: options)
            try await device.start()
            let dropped = ContinuousClock.now
            await device.dropConnection()
            let resumed = try await device.next { if case .connected(let hello) = $0, hello.resumed { hello } else { nil } }
            let waited = ContinuousClock.now - dropped
            let refusals = log.lines.filter { $0.contains("connect refused (429") }
            #expect(resumed.resumed)
            #expect(refusals.count == 1, "\(log.lines)")
            #expect(waited >= .seconds(2.5), "resumed after \(waited)")
        }
    }

    @Test func aDeviceReplacedByANewerConnectionStops() async throws {
        try await ClientRelay.run { relay in
            let first = try relay.device("robot-1")
            try await first.start()
            let second = try relay.device("robot-1")
            try await second.start()
            #expect(await Self.ending(of: first) == .replaced)
            #expect(await second.hello?.resumed == false)
        }
    }

    @Test func aDeviceSignsEachConnectAsTheRelayChecksIt() throws {
        let query = RelayClient.signedQuery(deviceID: "robot-1", secret: "s3cret")
        var parameters: [String: String] = [:]
        for pair in query.split(separator: "&") {
            let parts = pair.split(separator: "=", maxSplits: 1).map(String.init)
            parameters[parts[0]] = parts[1]
        }
        let signature = try DeviceSignature(parameter: { parameters[$0] })
        #expect(signature.deviceID == "robot-1")
        #expect(DeviceSignature.mac(deviceID: "robot-1", timestampText: signature.timestampText, nonce: signature.nonce, secret: "s3cret") == signature.signature)
        #expect(RelayClient.signedQuery(deviceID: "robot-1", secret: "s3cret") != query)
    }

    /// The error that ended `client`'s events.
    static func ending(of client: RelayClient) async -> RelayClientError? {
        do {
            for try await _ in client.events {}
            return nil
        } catch {
            return error as? RelayClientError
        }
    }
}

extension RelayClientError {
    var detail: String {
        if case .refused(_, let detail) = self { detail } else { "" }
    }
}

extension Optional where Wrapped == RelayClientError {
    var detail: String { self?.detail ?? "" }
}

extension RelayClient {
    /// The next event `match` picks, skipping others (15 s at most).
    func next<T: Sendable>(_ match: @escaping @Sendable (RelayEvent) -> T?) async throws -> T {
        try await next(count: 1, match)[0]
    }

    /// The next `count` events `match` picks, skipping others.
    func next<T: Sendable>(count: Int, _ match: @escaping @Sendable (RelayEvent) -> T?) async throws -> [T] {
        try await withDeadline(.seconds(15), "\(count) matching events") {
            var found: [T] = []
            for try await event in self.events {
                if let value = match(event) { found.append(value) }
                if found.count == count { return found }
            }
            throw RelayClientError.closed
        }
    }
}

/// Log lines a client wrote.
final class LogLines: LogHandler, @unchecked Sendable {
    // Safe: `stored` is a Mutex; the rest is set once.
    private let stored = Mutex<[String]>([])
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info

    var lines: [String] { stored.withLock { $0 } }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        stored.withLock { $0.append(event.message.description) }
    }
}
