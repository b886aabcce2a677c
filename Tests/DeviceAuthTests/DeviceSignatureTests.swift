import OpenSSLCrypto
import Synchronization
import Testing

@testable import DeviceAuth

@Suite struct DeviceSignatureTests {
    let now = 1_800_000_000

    func parameters(_ signature: DeviceSignature) -> [String: String] {
        ["device_id": signature.deviceID, "ts": String(signature.timestamp), "nonce": signature.nonce, "sig": signature.signature]
    }

    func authenticate(
        _ signature: DeviceSignature,
        with authenticator: DeviceAuthenticator,
        at time: Int? = nil
    ) async -> Result<DeviceRecord, AuthFailure> {
        do {
            return .success(try await authenticator.authenticate(signature, now: time ?? now))
        } catch {
            return .failure(error)
        }
    }

    @Test func signatureMatchesTheContractsFormula() {
        // sig = hex(HMAC-SHA256(secret, device_id \n ts \n nonce)), checked against openssl:
        // printf 'robot-1\n1800000000\nnonce-0123456789' | openssl dgst -sha256 -hmac s3cret
        let signature = DeviceSignature.sign(deviceID: "robot-1", timestamp: 1_800_000_000, nonce: "nonce-0123456789", secret: "s3cret")
        #expect(signature.signature == "9ad22307242ed2a9d1a040ba76b53a0adf30e5d2ebeec52f2d44b4570bfd4bcc")
        #expect(signature.query == "device_id=robot-1&ts=1800000000&nonce=nonce-0123456789&sig=\(signature.signature)")
    }

    @Test func theSignatureCoversTsAsSentLeadingZeroIncluded() async {
        let directory = StaticDirectory(records: ["robot-1": DeviceRecord(deviceID: "robot-1", secrets: ["s3cret"])])
        let authenticator = DeviceAuthenticator(directory: directory, masterKey: nil)
        func parsed(ts: String, signedOver signedTs: String, nonce: String) throws -> DeviceSignature {
            let sig = DeviceSignature.mac(deviceID: "robot-1", timestampText: signedTs, nonce: nonce, secret: "s3cret")
            let query = ["device_id": "robot-1", "ts": ts, "nonce": nonce, "sig": sig]
            return try DeviceSignature { query[$0] }
        }
        // Signed over "01800000000" and sent so: accepted, and its query carries ts as sent.
        let zeroPadded = try! parsed(ts: "01800000000", signedOver: "01800000000", nonce: "nonce-aaaaaaaaaaaaa")
        #expect(zeroPadded.query.contains("&ts=01800000000&"))
        #expect(await authenticate(zeroPadded, with: authenticator).map(\.deviceID) == .success("robot-1"))
        // Signed over the number but sent with a leading zero: the message differs, refused.
        let altered = try! parsed(ts: "01800000000", signedOver: "1800000000", nonce: "nonce-bbbbbbbbbbbbb")
        #expect(await authenticate(altered, with: authenticator).map(\.deviceID) == .failure(.badDeviceSignature))
    }

    @Test func seedFormNamesTheMissingParameters() {
        let query = ["device_id": "robot-1", "sig": String(repeating: "a", count: 64)]
        #expect(throws: AuthFailure.missingDeviceParameters(["ts", "nonce"])) { try DeviceSignature { query[$0] } }
        #expect(AuthFailure.missingDeviceParameters(["ts", "nonce"]).detail.hasPrefix("Missing ts and nonce"))
    }

    @Test func malformedParametersAreRefused() {
        let good = ["device_id": "robot-1", "ts": "1800000000", "nonce": "0123456789abcdef", "sig": String(repeating: "a", count: 64)]
        func parse(_ change: [String: String]) -> AuthFailure? {
            let query = good.merging(change) { _, new in new }
            do {
                _ = try DeviceSignature { query[$0] }
                return nil
            } catch {
                return error
            }
        }
        #expect(parse([:]) == nil)
        #expect(parse(["device_id": "robot 1"]) == .malformedDeviceID)
        #expect(parse(["device_id": String(repeating: "r", count: 129)]) == .malformedDeviceID)
        #expect(parse(["ts": "soon"]) == .malformedTimestamp)
        #expect(parse(["ts": "-5"]) == .malformedTimestamp)
        #expect(parse(["nonce": "short"]) == .malformedNonce)
        #expect(parse(["nonce": "0123456789abcdef!"]) == .malformedNonce)
        #expect(parse(["sig": String(repeating: "A", count: 64)]) == .malformedSignature)
        #expect(parse(["sig": "abc"]) == .malformedSignature)
    }

    @Test func registeredDeviceConnectsWithEitherOfItsTwoSecrets() async {
        let directory = StaticDirectory(records: ["robot-1": DeviceRecord(deviceID: "robot-1", secrets: ["old-secret", "new-secret"])])
        let authenticator = DeviceAuthenticator(directory: directory, masterKey: nil)
        let withOld = DeviceSignature.sign(deviceID: "robot-1", timestamp: now, nonce: "nonce-aaaaaaaaaaaa", secret: "old-secret")
        let withNew = DeviceSignature.sign(deviceID: "robot-1", timestamp: now, nonce: "nonce-bbbbbbbbbbbb", secret: "new-secret")
        let withWrong = DeviceSignature.sign(deviceID: "robot-1", timestamp: now, nonce: "nonce-cccccccccccc", secret: "guess")
        #expect(await authenticate(withOld, with: authenticator).map(\.deviceID) == .success("robot-1"))
        #expect(await authenticate(withNew, with: authenticator).map(\.deviceID) == .success("robot-1"))
        #expect(await authenticate(withWrong, with: authenticator) == .failure(.badDeviceSignature))
    }

    @Test func masterKeyDerivesSecretsForUnregisteredDevices() async {
        let authenticator = DeviceAuthenticator(directory: StaticDirectory(records: [:]), masterKey: "master-key-master-key-master-key")
        let derived = DeviceSignature.derivedSecret(deviceID: "robot-9", masterKey: "master-key-master-key-master-key")
        #expect(derived == LibCrypto.hmacSHA256(key: Array("master-key-master-key-master-key".utf8), message: Array("robot-9".utf8)).hexString)
        let signature = DeviceSignature.sign(deviceID: "robot-9", timestamp: now, nonce: "nonce-dddddddddddd", secret: derived)
        #expect(await authenticate(signature, with: authenticator).map(\.deviceID) == .success("robot-9"))
        let unknown = DeviceAuthenticator(directory: StaticDirectory(records: [:]), masterKey: nil)
        #expect(await authenticate(signature, with: unknown) == .failure(.unknownDevice))
    }

    @Test func staleOrFutureTimestampIsRefused() async {
        let authenticator = DeviceAuthenticator(directory: StaticDirectory(records: [:]), masterKey: "master-key-master-key-master-key")
        let secret = DeviceSignature.derivedSecret(deviceID: "robot-1", masterKey: "master-key-master-key-master-key")
        let old = DeviceSignature.sign(deviceID: "robot-1", timestamp: now - 301, nonce: "nonce-eeeeeeeeeeee", secret: secret)
        let future = DeviceSignature.sign(deviceID: "robot-1", timestamp: now + 301, nonce: "nonce-ffffffffffff", secret: secret)
        let edge = DeviceSignature.sign(deviceID: "robot-1", timestamp: now - 300, nonce: "nonce-gggggggggggg", secret: secret)
        #expect(await authenticate(old, with: authenticator) == .failure(.staleTimestamp(window: 300, now: now)))
        #expect(await authenticate(future, with: authenticator) == .failure(.staleTimestamp(window: 300, now: now)))
        #expect(await authenticate(edge, with: authenticator).map(\.deviceID) == .success("robot-1"))
    }

    @Test func nonceIsAcceptedOnce() async {
        let authenticator = DeviceAuthenticator(directory: StaticDirectory(records: [:]), masterKey: "master-key-master-key-master-key")
        let secret = DeviceSignature.derivedSecret(deviceID: "robot-1", masterKey: "master-key-master-key-master-key")
        let signature = DeviceSignature.sign(deviceID: "robot-1", timestamp: now, nonce: "nonce-hhhhhhhhhhhh", secret: secret)
        #expect(await authenticate(signature, with: authenticator).map(\.deviceID) == .success("robot-1"))
        #expect(await authenticate(signature, with: authenticator) == .failure(.replayedNonce))
        // A failed attempt does not spend the nonce.
        let forged = DeviceSignature(deviceID: "robot-1", timestamp: now, nonce: "nonce-iiiiiiiiiiii", signature: String(repeating: "0", count: 64))
        #expect(await authenticate(forged, with: authenticator) == .failure(.badDeviceSignature))
        let genuine = DeviceSignature.sign(deviceID: "robot-1", timestamp: now, nonce: "nonce-iiiiiiiiiiii", secret: secret)
        #expect(await authenticate(genuine, with: authenticator).map(\.deviceID) == .success("robot-1"))
    }

    @Test func revokedDeviceIsForbiddenEvenWithAValidSignature() async {
        let directory = StaticDirectory(records: ["robot-1": DeviceRecord(deviceID: "robot-1", secrets: ["secret"], revoked: true)])
        let authenticator = DeviceAuthenticator(directory: directory, masterKey: nil)
        let signature = DeviceSignature.sign(deviceID: "robot-1", timestamp: now, nonce: "nonce-jjjjjjjjjjjj", secret: "secret")
        #expect(await authenticate(signature, with: authenticator) == .failure(.deviceRevoked))
        #expect(AuthFailure.deviceRevoked.status == .forbidden)
    }

    @Test func eachDeviceHasItsOwnShareOfTheReplayCache() {
        let cache = NonceCache(perDevice: 3, devices: 2)
        for index in 0..<3 {
            #expect(cache.insert(deviceID: "d", nonce: "n\(index)", expiresAt: now + 10, now: now) == .accepted)
        }
        // Its share is spent on live nonces: refused rather than forgetting one that could be replayed.
        #expect(cache.insert(deviceID: "d", nonce: "n3", expiresAt: now + 10, now: now) == .deviceFull)
        #expect(cache.insert(deviceID: "d", nonce: "n0", expiresAt: now + 10, now: now) == .replayed)
        // Another device is not affected; a third is past the bound on devices.
        #expect(cache.insert(deviceID: "e", nonce: "n0", expiresAt: now + 10, now: now) == .accepted)
        #expect(cache.insert(deviceID: "f", nonce: "n0", expiresAt: now + 10, now: now) == .full)
        // Once they expire there is room again.
        #expect(cache.insert(deviceID: "d", nonce: "n3", expiresAt: now + 30, now: now + 11) == .accepted)
        // A minute on, every dead nonce is forgotten, and with them the devices that held them.
        #expect(cache.insert(deviceID: "f", nonce: "n0", expiresAt: now + 80, now: now + 61) == .accepted)
        #expect(cache.count == 1)
    }

    @Test func spentNoncesAreToldAndRememberedOnesStaySpent() {
        let told = Mutex<[String]>([])
        let cache = NonceCache { deviceID, nonce, expiresAt in told.withLock { $0.append("\(deviceID)/\(nonce)/\(expiresAt)") } }
        cache.remember([(deviceID: "d", nonce: "old", expiresAt: now + 10)])
        #expect(cache.insert(deviceID: "d", nonce: "old", expiresAt: now + 10, now: now) == .replayed)
        #expect(cache.insert(deviceID: "d", nonce: "new", expiresAt: now + 10, now: now) == .accepted)
        #expect(cache.insert(deviceID: "d", nonce: "new", expiresAt: now + 10, now: now) == .replayed)
        #expect(told.withLock { $0 } == ["d/new/\(now + 10)"])
    }
}

struct StaticDirectory: DeviceDirectory {
    var records: [String: DeviceRecord]
    func device(_ deviceID: String) async throws -> DeviceRecord? { records[deviceID] }
}
