/// The store's copy of the live state read back as a restarting relay reads it: kept messages replayed from the outbox log, links and sessions from SQLite.
import Foundation
import Registry
import Testing

@Suite struct LiveStateStoreTests {
    static func message(_ seq: Int) -> StoredMessage { StoredMessage(seq: seq, text: #"{"type":"m","seq":\#(seq)}"#) }

    static func link(_ id: String) -> StoredLink { StoredLink(id: id, tokenHash: Array(repeating: 7, count: 32), party: "device", principal: id) }

    @Test func keptMessagesComeBackWithoutWhatWasAckedOrEnded() async throws {
        try await withTemporaryDirectory { directory in
            let store = try RelayStore(path: "\(directory)/relay.sqlite")
            var first = LiveStateBatch()
            first.links = [Self.link("a"), Self.link("b")]
            first.messages = (1...5).map { ("a", Self.message($0)) } + (1...2).map { ("b", Self.message($0)) }
            var second = LiveStateBatch()
            second.forgotten = [("a", 1, 3)]
            second.messages = [("a", Self.message(6))]
            second.endedLinks = ["b"]
            try await store.save([first])
            try await store.save([second])
            let state = try store.liveState()
            #expect(state.links.map(\.id) == ["a"])
            #expect(state.links.first?.tokenHash == Array(repeating: 7, count: 32))
            #expect(state.messages["a"]?.map(\.seq) == [3, 4, 5, 6])
            #expect(state.messages["a"]?.last == Self.message(6))
            #expect(state.messages["b"] == nil)
        }
    }

    @Test func aBatchWrittenTwiceAfterAFailureChangesNothingAndATornTailIsIgnored() async throws {
        try await withTemporaryDirectory { directory in
            let store = try RelayStore(path: "\(directory)/relay.sqlite")
            var batch = LiveStateBatch()
            batch.links = [Self.link("a")]
            batch.messages = [("a", Self.message(1)), ("a", Self.message(2))]
            var acked = LiveStateBatch()
            acked.forgotten = [("a", 1, 2)]
            try await store.save([batch, acked])
            try await store.save([batch, acked])
            // A kill in the middle of a write leaves half a record at the end.
            let log = try #require(FileHandle(forWritingAtPath: "\(directory)/relay.sqlite-outbox"))
            try log.seekToEnd()
            try log.write(contentsOf: Data([1, 1, 0, 0x61, 9, 0, 0]))
            try log.close()
            #expect(try store.liveState().messages["a"]?.map(\.seq) == [2])
        }
    }

    @Test func aSnapshotReplacesTheLogAndWhatFollowsItIsKept() async throws {
        try await withTemporaryDirectory { directory in
            let store = try RelayStore(path: "\(directory)/relay.sqlite")
            var batch = LiveStateBatch()
            batch.links = [Self.link("a")]
            batch.messages = (1...100).map { ("a", Self.message($0)) }
            try await store.save([batch])
            let grown = store.outboxLogBytes
            var snapshot = LiveStateBatch()
            snapshot.snapshot = ["a": [Self.message(100)]]
            var after = LiveStateBatch()
            after.messages = [("a", Self.message(101))]
            try await store.save([snapshot, after])
            #expect(store.outboxLogBytes < grown / 10)
            #expect(try store.liveState().messages["a"]?.map(\.seq) == [100, 101])
        }
    }
}

extension LiveStateStoreTests {
    @Test func aLinksCseqMarkComesBackThroughASnapshotAndGoesWhenItEnds() async throws {
        try await withTemporaryDirectory { directory in
            let store = try RelayStore(path: "\(directory)/relay.sqlite")
            var first = LiveStateBatch()
            first.links = [Self.link("a"), Self.link("b")]
            first.marks = [("a", 3), ("b", 9)]
            var second = LiveStateBatch()
            second.marks = [("a", 5)]
            try await store.save([first, second])
            #expect(try store.liveState().links.map { "\($0.id)=\($0.cseq)" }.sorted() == ["a=5", "b=9"])
            var snapshot = LiveStateBatch()
            snapshot.snapshot = [:]
            snapshot.marks = [("a", 6), ("b", 9)]
            var after = LiveStateBatch()
            after.endedLinks = ["b"]
            after.links = [Self.link("c")]
            try await store.save([snapshot, after])
            #expect(try store.liveState().links.map { "\($0.id)=\($0.cseq)" }.sorted() == ["a=6", "c=0"])
        }
    }
}
