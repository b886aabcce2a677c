/// A link moving to another node as a pure value: what is sent meanwhile waits in order, then
/// follows the link, or stays when the move fails.
import RelayCore
import Testing

@Suite struct LinkRelocationTests {
    typealias Relocation = LinkRelocation<String, String>

    /// Where each offer went: "here", "held", or the destination's name.
    private func offer(_ messages: [String], to relocation: inout Relocation) -> [String] {
        messages.map { message in
            switch relocation.offer(message) {
            case .here: "here"
            case .held: "held"
            case .follow(let destination): destination
            }
        }
    }

    @Test func whatIsSentDuringAMoveWaitsInOrderThenGoesAheadOfWhatComesAfter() {
        var relocation = Relocation.staying
        #expect(offer(["a"], to: &relocation) == ["here"])
        let began = relocation.begin()
        #expect(began && relocation.isMoving)
        #expect(offer(["b", "c"], to: &relocation) == ["held", "held"])
        #expect(relocation.destination == nil)
        let waited = relocation.finish(at: "node-2")
        #expect(waited == ["b", "c"])
        #expect(offer(["d"], to: &relocation) == ["node-2"])
        #expect(relocation.destination == "node-2" && relocation.isMoving)
    }

    @Test func aFailedMoveLeavesTheLinkHereWithWhatWaited() {
        var relocation = Relocation.staying
        _ = relocation.begin()
        _ = offer(["b"], to: &relocation)
        let waited = relocation.abort()
        #expect(waited == ["b"] && !relocation.isMoving)
        #expect(offer(["c"], to: &relocation) == ["here"])
        // Nothing to finish once it stays; a new move can begin.
        let finished = relocation.finish(at: "node-2")
        let again = relocation.begin()
        #expect(finished == nil && again)
    }

    @Test func aLinkMovesOnceAtATime() {
        var relocation = Relocation.staying
        let first = relocation.begin()
        let second = relocation.begin()
        _ = relocation.finish(at: "node-2")
        let afterwards = relocation.begin()
        let aborted = relocation.abort()
        #expect(first && !second && !afterwards)
        #expect(aborted.isEmpty && relocation.destination == "node-2")
    }
}
